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
    /// Linux SDN: tenant isolation settings (`[isolation]`).
    pub isolation: IsolationConfig,
    /// The etcd cluster (when `store = "etcd"`).
    pub etcd: EtcdConfig,
    /// The MidoNet API (when `sdn = "midonet"`).
    pub midonet: MidonetConfig,
    /// Which addresses pipelines may hand out (the operator's authority).
    pub addresses: AddressesConfig,
    /// The Kubernetes API (pod and namespace labels, when a network's
    /// configuration asks for them).
    pub kubernetes: KubernetesConfig,
    /// Pulling `oci://` modules (`[distribution]`; tenetctl only).
    pub distribution: DistributionConfig,
}

/// `[distribution]`: how `tenetctl policy compile` and `tenetctl install`
/// pull the `oci://…@sha256:…` modules a pipeline names (the CNI exec never
/// pulls: it reads what these put in the module dirs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributionConfig {
    /// PEM `PUBLIC KEY` (e.g. `cosign.pub`, ECDSA P-256) a pulled module's
    /// cosign signature must verify with. Unset: pipelines' `oci://`
    /// modules are not pulled (they must already be in a module dir).
    pub verify_key: Option<PathBuf>,
    /// Registries (`host:port`) reached over plain HTTP instead of HTTPS,
    /// e.g. a registry on loopback. Signatures are checked all the same.
    pub insecure_registries: Vec<String>,
    /// PEM CA bundle trusted for HTTPS registries; the system's roots
    /// (`/etc/ssl/certs/ca-certificates.crt`) when unset.
    pub ca_file: Option<PathBuf>,
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

/// `[addresses]`: the ranges policy modules may hand out on this node. Only
/// the operator sets them (this file, not the network configuration on
/// stdin); a plan outside them is refused with code 104. Whatever is set
/// here, loopback, multicast, unspecified, reserved, IPv4-mapped and
/// link-local ranges (except inside the host-link range) are refused
/// (`plan::authority`), and so, at ADD time, is anything overlapping the
/// node's own addresses and routes (`plan::node`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddressesConfig {
    /// Supernets pod pools and static addresses may come from, both
    /// families in one list (default: 10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16, fd00::/8). Narrow it to the pools your pipelines use.
    pub pools: Vec<ipnet::IpNet>,
    /// The range host links (Rainbond's `eth1`) get their addresses from,
    /// at most one per family (default: 169.254.128.0/17; `[]` for none).
    pub host_links: Vec<ipnet::IpNet>,
    /// Addresses in the host-link range never handed out (default: the
    /// cloud metadata services, 169.254.169.0/24 and 169.254.170.0/24).
    pub host_link_exclude: Vec<ipnet::IpNet>,
}

impl Default for AddressesConfig {
    fn default() -> Self {
        use crate::plan::authority::{
            DEFAULT_HOST_LINK_EXCLUDE, DEFAULT_HOST_LINKS, DEFAULT_POOLS,
        };
        let parse = |v: &[&str]| {
            v.iter()
                .map(|s| s.parse().expect("valid constant"))
                .collect()
        };
        Self {
            pools: parse(DEFAULT_POOLS),
            host_links: parse(DEFAULT_HOST_LINKS),
            host_link_exclude: parse(DEFAULT_HOST_LINK_EXCLUDE),
        }
    }
}

impl AddressesConfig {
    /// The checked authority (an error names the key at fault). Checked
    /// where plans are made (ADD, STATUS, tenetctl), not on every load, so
    /// that a bad range never stops a DEL.
    pub fn authority(&self) -> Result<crate::plan::AddressAuthority, ConfigError> {
        crate::plan::AddressAuthority::new(
            self.pools.clone(),
            self.host_links.clone(),
            self.host_link_exclude.clone(),
        )
        .map_err(|reason| ConfigError::Addresses { reason })
    }
}

/// Which service endpoints a pod may reach (traffic the node DNATed, as
/// kube-proxy does). See docs/isolation.md.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTenants {
    /// Endpoints in any tenant: the service layer and NetworkPolicy decide.
    #[default]
    Any,
    /// Endpoints of the client's own tenant and of `shared_tenants` only.
    Same,
}

/// `[isolation]`: how the Linux SDN keeps tenants apart where the service
/// path crosses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IsolationConfig {
    /// `"any"` (default) or `"same"`.
    pub service_tenants: ServiceTenants,
    /// Tenants every pod reaches through services even with `"same"`
    /// (cluster DNS lives in `kube-system`).
    pub shared_tenants: Vec<String>,
    /// What the DEL of a tenant's last pod does with the tenant's bridge
    /// and rules: `true` (default) keeps them, idle, for the tenant's next
    /// pod, so that DEL costs what any other does; CNI GC, the node agent's
    /// passes, and the ADD of another tenant whose subnet overlaps remove
    /// an idle network. `false` removes them in that DEL.
    pub keep_idle_tenants: bool,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            service_tenants: ServiceTenants::Any,
            shared_tenants: vec!["kube-system".into()],
            keep_idle_tenants: true,
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
    /// Bound on any one etcd operation (connecting, failover between
    /// members and retries included), in milliseconds; past it ADD fails
    /// with code 11.
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
    /// TTL of the lease pending claims of the two-phase API (reserved, not
    /// yet confirmed) are written under, in seconds: they free themselves
    /// at most this long after they were reserved. ADD does not use them:
    /// its claims are confirmed at once, before the pod is configured.
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
///
/// [`Config::load`] checks this section when `sdn = "midonet"`
/// ([`MidonetConfig::validate`]): everything that can be known wrong without
/// reading a file or calling MidoNet is refused there, naming the key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MidonetConfig {
    /// API base URLs (`http://api1:8181/midonet-api`), tried in order.
    pub endpoints: Vec<String>,
    /// User for the Basic-auth login that yields an X-Auth-Token. Needs
    /// `password_file`. Unset: no login (MidoNet's default
    /// `MockAuthService` accepts every call).
    pub username: Option<String>,
    /// File holding the password (one line). MidoNet splits the login's
    /// `user:password` on every `:`, so neither may contain one.
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
    /// `"5.x"` (the default and the only one): the MidoNet 5.x REST API.
    /// `"legacy"` (2015.06) is refused: that API makes its own object ids
    /// and answers a re-sent id with 500, which tenet's crash-safe,
    /// id-first creation cannot work with (see docs/midonet.md).
    pub api_profile: Option<String>,
    /// File holding this node's host id when `host_id` is unset (default
    /// `/etc/midonet_host_id.properties`, then
    /// `/etc/midolman/host_uuid.properties`; `host_uuid=<id>` lines).
    pub host_id_file: Option<PathBuf>,
    /// Pool the tenant-router link networks come from (default
    /// [`MidonetConfig::DEFAULT_LINK_POOL`]). Each tenant's SNAT address is
    /// in it, so the provider side must route it to the provider router.
    /// Must not overlap 169.254.0.0/16 (MidoNet's own link-local uses) nor
    /// non-unicast space.
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
    /// MTU of pods' interfaces on MidoNet ports, both veth ends (default
    /// [`MidonetConfig::DEFAULT_MTU`]: a 1500-byte underlay minus VXLAN's
    /// 50 bytes of tunnel overhead, which also fits GRE's 46). With jumbo
    /// frames: the underlay MTU minus 50. A plan may ask for less, never more.
    pub mtu: Option<u32>,
    /// CA certificates (PEM) that sign the API's TLS certificate; required
    /// for `https://` endpoints and the only trust anchors used for them
    /// (for a certificate from a public CA, name the system bundle,
    /// `/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: Option<PathBuf>,
}

/// Address ranges a MidoNet link pool must stay out of: `(network, prefix
/// length, why)`.
const MIDONET_RESERVED: [([u8; 4], u8, &str); 5] = [
    ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
    ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
    (
        [169, 254, 0, 0],
        16,
        "link-local 169.254.0.0/16, which MidoNet uses itself (metadata 169.254.169.254 and the \
         addresses it maps to, recirculation 169.254.123.0/24, flow state, VPP, health monitors)",
    ),
    ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
    ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
];

impl MidonetConfig {
    /// The link pool when `link_pool` is unset.
    pub const DEFAULT_LINK_POOL: &str = "172.16.0.0/16";
    /// The pod MTU when `mtu` is unset.
    pub const DEFAULT_MTU: u32 = 1450;

    /// Checks what can be checked without I/O; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        self.check_api_profile()?;
        if self.endpoints.is_empty() {
            return Err("midonet.endpoints: no MidoNet API endpoint configured".into());
        }
        let mut https = false;
        for e in &self.endpoints {
            match e.split_once("://").map(|(s, _)| s.to_ascii_lowercase()) {
                Some(s) if s == "http" => {}
                Some(s) if s == "https" => https = true,
                _ => return Err(format!("midonet.endpoints: {e:?} is not an http(s) URL")),
            }
        }
        match (&self.ca_file, https) {
            (None, true) => {
                return Err(
                    "midonet.ca_file: not set, but an endpoint is https://; name the \
                            CA certificate(s) that sign the API's certificate (for a public CA, \
                            /etc/ssl/certs/ca-certificates.crt)"
                        .into(),
                );
            }
            (Some(f), false) => {
                return Err(format!(
                    "midonet.ca_file: {} is set, but no endpoint is https:// (the API would be \
                     reached without TLS)",
                    f.display()
                ));
            }
            _ => {}
        }
        match (&self.username, &self.password_file) {
            (Some(u), _) if u.is_empty() => {
                return Err("midonet.username: empty (omit it to log in to no one, \
                            with MidoNet's MockAuthService)"
                    .into());
            }
            (Some(u), _) if u.contains(':') => {
                return Err(format!(
                    "midonet.username: {u:?} contains ':', which MidoNet's login cannot accept \
                     (it splits \"user:password\" on every ':')"
                ));
            }
            (Some(u), None) => {
                return Err(format!(
                    "midonet.password_file: not set, but midonet.username is ({u:?}): MidoNet's \
                     login would get \"{u}:\" and refuse it"
                ));
            }
            (None, Some(f)) => {
                return Err(format!(
                    "midonet.username: not set, but midonet.password_file is ({})",
                    f.display()
                ));
            }
            _ => {}
        }
        if self.provider_router.is_none() {
            return Err(
                "midonet.provider_router: not set (the id of the router tenant routers \
                        link to)"
                    .into(),
            );
        }
        let pool = self.link_pool_net()?;
        let prefix = self.link_prefix.unwrap_or(30);
        if !(pool.prefix_len()..=30).contains(&prefix) {
            return Err(format!(
                "midonet.link_prefix: {prefix} must be between the pool's /{} and /30",
                pool.prefix_len()
            ));
        }
        self.port_mtu()?;
        Ok(())
    }

    /// `api_profile`: only MidoNet 5.x.
    pub fn check_api_profile(&self) -> Result<(), String> {
        match self.api_profile.as_deref().map(str::trim) {
            None | Some("" | "5.x" | "5" | "v5") => Ok(()),
            Some(p @ ("legacy" | "2015" | "2015.06" | "v1")) => Err(format!(
                "midonet.api_profile: {p:?} is not supported: the 2015.06 API ignores the object \
                 ids tenet sends (it answers a re-sent id with 500, not 409), so tenet could \
                 neither record its objects nor resume or undo a half-done ADD; tenet speaks \
                 MidoNet 5.x only (\"5.x\")"
            )),
            Some(p) => Err(format!(
                "midonet.api_profile: {p:?} is not \"5.x\", the only MidoNet API tenet speaks"
            )),
        }
    }

    /// `link_pool` (or its default), checked: IPv4, unicast, outside
    /// MidoNet's link-local range.
    pub fn link_pool_net(&self) -> Result<ipnet::Ipv4Net, String> {
        let text = self.link_pool.as_deref().unwrap_or(Self::DEFAULT_LINK_POOL);
        let pool: ipnet::Ipv4Net = text
            .trim()
            .parse()
            .map_err(|e| format!("midonet.link_pool: {text:?} is not an IPv4 CIDR: {e}"))?;
        let pool = pool.trunc();
        for (net, len, why) in MIDONET_RESERVED {
            let r = ipnet::Ipv4Net::new(net.into(), len).expect("valid reserved range");
            // Aligned prefixes overlap only when one holds the other.
            if r.contains(&pool) || pool.contains(&r) {
                return Err(format!("midonet.link_pool: {pool} overlaps {why}"));
            }
        }
        Ok(pool)
    }

    /// `mtu` (or its default), checked.
    pub fn port_mtu(&self) -> Result<u32, String> {
        let mtu = self.mtu.unwrap_or(Self::DEFAULT_MTU);
        if !(576..=65535).contains(&mtu) {
            return Err(format!(
                "midonet.mtu: {mtu} is outside 576..=65535 (the underlay MTU minus the tunnel \
                 overhead: 50 bytes for VXLAN, 46 for GRE)"
            ));
        }
        Ok(mtu)
    }
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
            isolation: IsolationConfig::default(),
            etcd: EtcdConfig::default(),
            midonet: MidonetConfig::default(),
            addresses: AddressesConfig::default(),
            kubernetes: KubernetesConfig::default(),
            distribution: DistributionConfig::default(),
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

/// A configuration that cannot be used; the message names the source and
/// key. Every variant is CNI code 7 ([`ConfigError::cni_code`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `TENET_CONFIG` names a file that does not exist.
    #[error("TENET_CONFIG: {path} does not exist")]
    MissingFile {
        /// The file named.
        path: String,
    },
    /// The network configuration's tenet keys do not parse.
    #[error("network configuration: {source}")]
    Network {
        /// What serde said, naming the key.
        #[source]
        source: serde_json::Error,
    },
    /// A layer (file, environment or network configuration) holds a value
    /// of the wrong shape.
    #[error("tenet configuration ({origin}): {source}")]
    Invalid {
        /// The layer at fault, as figment names it.
        origin: String,
        /// What figment said, naming the key.
        #[source]
        source: Box<figment::Error>,
    },
    /// The `[midonet]` section is unusable.
    #[error("tenet configuration ({file}): {reason}")]
    Midonet {
        /// The configuration file.
        file: String,
        /// Which key is at fault and why.
        reason: String,
    },
    /// The address authority (`[addresses]`: pools, host links) is
    /// unusable.
    #[error("tenet configuration: {reason}")]
    Addresses {
        /// Which key is at fault and why.
        reason: String,
    },
}

impl ConfigError {
    /// The CNI error code: an invalid configuration, 7.
    pub fn cni_code(&self) -> u32 {
        crate::cni::codes::INVALID_CONFIG
    }
}

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
            return Err(ConfigError::MissingFile {
                path: file.to_owned(),
            });
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
            .map_err(|source| ConfigError::Network { source })?;
            fig = fig.merge(Serialized::globals(o));
        }
        let cfg: Config = fig.extract().map_err(|e| {
            let origin = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            ConfigError::Invalid {
                origin,
                source: Box::new(e),
            }
        })?;
        if cfg.sdn == SdnKind::Midonet {
            cfg.midonet
                .validate()
                .map_err(|reason| ConfigError::Midonet {
                    file: file.to_owned(),
                    reason,
                })?;
        }
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
    fn distribution_section_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenet.toml");
        std::fs::write(
            &file,
            "[distribution]\nverify_key = \"/etc/tenet/cosign.pub\"\n\
             insecure_registries = [\"127.0.0.1:5000\"]\n",
        )
        .unwrap();
        let c = Config::load(&env(&[("TENET_CONFIG", file.to_str().unwrap())]), None).unwrap();
        assert_eq!(
            c.distribution.verify_key.as_deref(),
            Some(Path::new("/etc/tenet/cosign.pub"))
        );
        assert_eq!(c.distribution.insecure_registries, ["127.0.0.1:5000"]);
        std::fs::write(&file, "[distribution]\nverify = \"x\"\n").unwrap();
        let e = Config::load(&env(&[("TENET_CONFIG", file.to_str().unwrap())]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify"), "{e}");
    }

    /// A `[midonet]` section that passes [`MidonetConfig::validate`].
    fn midonet() -> MidonetConfig {
        MidonetConfig {
            endpoints: vec!["http://api:8181/midonet-api".into()],
            username: Some("admin".into()),
            password_file: Some("/etc/tenet/midonet.password".into()),
            provider_router: Some("0b0b0b0b-0000-4000-8000-000000000001".into()),
            ..MidonetConfig::default()
        }
    }

    #[test]
    fn midonet_sections_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenet.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::load(&env(&[("TENET_CONFIG", file.to_str().unwrap())]), None)
        };
        let base = "sdn = \"midonet\"\n[midonet]\nendpoints = [\"http://api/midonet-api\"]\n\
                    provider_router = \"0b0b0b0b-0000-4000-8000-000000000001\"\n";
        load(base).unwrap();
        let e = load(&format!("{base}api_profile = \"legacy\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("midonet.api_profile") && e.contains("tenet.toml"),
            "{e}"
        );
        // The same section is not checked when MidoNet is not the SDN.
        load(&format!("{base}api_profile = \"legacy\"\n").replace("midonet\"\n[", "linux\"\n["))
            .unwrap();
    }

    #[test]
    fn midonet_validation_names_the_key() {
        midonet().validate().unwrap();
        let bad = |f: &dyn Fn(&mut MidonetConfig), key: &str, why: &str| {
            let mut c = midonet();
            f(&mut c);
            let e = c.validate().unwrap_err();
            assert!(e.contains(key) && e.contains(why), "{key}: {e}");
        };
        bad(
            &|c| c.api_profile = Some("legacy".into()),
            "midonet.api_profile",
            "2015.06",
        );
        bad(
            &|c| c.api_profile = Some("v9".into()),
            "midonet.api_profile",
            "5.x",
        );
        bad(&|c| c.endpoints.clear(), "midonet.endpoints", "no MidoNet");
        bad(
            &|c| c.endpoints = vec!["ftp://x".into()],
            "midonet.endpoints",
            "http(s)",
        );
        bad(
            &|c| c.password_file = None,
            "midonet.password_file",
            "\"admin:\"",
        );
        bad(&|c| c.username = None, "midonet.username", "password_file");
        bad(
            &|c| c.username = Some("ad:min".into()),
            "midonet.username",
            "':'",
        );
        bad(
            &|c| c.username = Some(String::new()),
            "midonet.username",
            "empty",
        );
        bad(
            &|c| c.provider_router = None,
            "midonet.provider_router",
            "not set",
        );
        for pool in [
            "169.254.0.0/16",
            "169.254.123.0/24",
            "169.0.0.0/8",
            "127.0.0.0/30",
            "224.1.0.0/16",
        ] {
            bad(
                &|c| c.link_pool = Some(pool.into()),
                "midonet.link_pool",
                "overlaps",
            );
        }
        bad(
            &|c| c.link_pool = Some("nope".into()),
            "midonet.link_pool",
            "IPv4 CIDR",
        );
        bad(&|c| c.link_prefix = Some(31), "midonet.link_prefix", "/30");
        bad(&|c| c.mtu = Some(100), "midonet.mtu", "576");
        bad(
            &|c| c.endpoints = vec!["https://api/midonet-api".into()],
            "midonet.ca_file",
            "https",
        );
        bad(
            &|c| c.ca_file = Some("/ca.pem".into()),
            "midonet.ca_file",
            "no endpoint is https",
        );
        // Without a user: no login (MockAuthService), fine.
        let mut c = midonet();
        c.username = None;
        c.password_file = None;
        c.validate().unwrap();
        c.endpoints.push("HTTPS://api2/midonet-api".into());
        c.ca_file = Some("/ca.pem".into());
        c.validate().unwrap();
        assert_eq!(
            c.link_pool_net().unwrap().to_string(),
            MidonetConfig::DEFAULT_LINK_POOL
        );
        assert_eq!(c.port_mtu().unwrap(), 1450);
    }

    #[test]
    fn the_address_authority_defaults_narrows_and_refuses_special_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tenet.toml");
        let load = |text: &str| {
            std::fs::write(&file, text).unwrap();
            Config::load(&env(&[("TENET_CONFIG", file.to_str().unwrap())]), None)
        };
        let d = load("").unwrap().addresses;
        assert_eq!(d, AddressesConfig::default());
        assert_eq!(d.pools.len(), 4);
        let c = load(
            "[addresses]\npools = [\"10.64.0.0/12\"]\nhost_links = []\nhost_link_exclude = []\n",
        )
        .unwrap();
        let a = c.addresses.authority().unwrap();
        assert!(
            a.check_tenant_range("10.88.0.0/16".parse().unwrap())
                .is_err()
        );
        assert!(a.host_link(crate::plan::IpFamily::Ipv4).is_none());
        for (text, key) in [
            (
                "[addresses]\npools = [\"127.0.0.0/8\"]\n",
                "addresses.pools[0]",
            ),
            (
                "[addresses]\npools = [\"10.0.0.0/8\", \"0.0.0.0/0\"]\n",
                "addresses.pools[1]",
            ),
            ("[addresses]\npools = [\"not a cidr\"]\n", "pools"),
            (
                "[addresses]\nhost_links = [\"10.0.0.0/24\"]\n",
                "addresses.host_links[0]",
            ),
            ("[addresses]\npool = []\n", "pool"),
        ] {
            // Checked where plans are made (ADD, tenetctl), so that a bad
            // range never stops a DEL.
            let e = load(text)
                .and_then(|c| c.addresses.authority().map(drop))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
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
