//! A `tenetctl install` into a temp dir, and what the end-to-end tests
//! with real CNI callers (runtimes_e2e, cri_e2e) check on the node after
//! ADD and DEL: veth host ends, tenant nft chains, attachment records and
//! address claims.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;

/// Runs a command with a deadline (a hung runtime must fail the test, not
/// wedge it): the containerd harness's.
pub use cri_harness::containerd::run;

/// Output bytes as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stdout of a command that succeeded; a panic with both outputs
/// otherwise.
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A `tenetctl install` into a temp dir: the plugin dir, the conflists and
/// tenet's own state and cache.
pub struct Installed {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Installed {
    pub fn new(extra: &[&str]) -> Self {
        Self::with_pipeline(&super::rainbond(), extra)
    }

    /// A `tenetctl install` of another pipeline manifest.
    pub fn with_pipeline(pipeline: &Path, extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        let p = |s: &str| root.join(s).display().to_string();
        let out = run(
            Command::new(super::binary("tenetctl"))
                .arg("install")
                .arg("--pipeline")
                .arg(pipeline)
                .arg("--module-dir")
                .arg(super::modules_dir())
                .args(["--bin-dir", &p("bin")])
                .args(["--conf-dir", &p("net.d")])
                .args(["--config-dir", &p("etc")])
                .args(["--install-module-dir", &p("modules")])
                .args(["--cache-dir", &p("cache")])
                .args(["--state-dir", &p("state")])
                .args(extra)
                .env("TENET_CONFIG", "/dev/null"),
            Duration::from_secs(120),
        );
        ok(out, "tenetctl install");
        Installed { _tmp: tmp, root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The attachment records (parsed) under tenet's state dir.
    pub fn records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let dir = self.path("state").join("attachments");
        for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(net.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let body = std::fs::read_to_string(f.path()).unwrap();
                out.push(
                    serde_json::from_str(&body)
                        .unwrap_or_else(|e| panic!("{}: {e}", f.path().display())),
                );
            }
        }
        out
    }

    /// Attachment records and address claims left under tenet's state dir.
    pub fn records_left(&self) -> Vec<String> {
        let mut left = Vec::new();
        let state = self.path("state");
        if let Ok(nets) = std::fs::read_dir(state.join("attachments")) {
            for net in nets.flatten() {
                for f in std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') {
                        left.push(format!("record {}", f.path().display()));
                    }
                }
            }
        }
        if let Ok(nets) = std::fs::read_dir(state.join("ipam")) {
            for net in nets.flatten() {
                let file = net.path().join("state.json");
                let Ok(body) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let n = v["attachments"].as_array().map_or(0, Vec::len);
                if n > 0 {
                    left.push(format!("{n} address claims in {}", file.display()));
                }
            }
        }
        left
    }
}

/// Links of the node namespace whose names start with `prefix`.
pub fn node_links(prefix: &str) -> BTreeSet<String> {
    let out = ok(
        run(
            Command::new("ip").args(["-j", "link", "show"]),
            Duration::from_secs(10),
        ),
        "ip link",
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// tenet's per-tenant nft chains in the node (`fwd-tb-…`, `gw-tb-…`,
/// `nat-tb-…`); none when the table does not exist.
pub fn tenant_chains() -> Vec<String> {
    let out = run(
        Command::new("nft").args(["-j", "list", "table", "inet", "tenet"]),
        Duration::from_secs(10),
    );
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["chain"]["name"].as_str())
        .filter(|n| n.contains("-tb-"))
        .map(str::to_owned)
        .collect()
}

/// What a DEL must leave: no host ends, no records, and no tenant chains
/// but those of idle tenant networks (kept for the tenant's next pod until
/// GC; `tenet::apply::idle_tenant_networks`).
pub fn assert_clean(inst: &Installed, when: &str) {
    assert_eq!(
        node_links("tn"),
        BTreeSet::new(),
        "{when}: veth host ends left"
    );
    let idle = tenet::apply::idle_tenant_networks().unwrap();
    let chains: Vec<String> = tenant_chains()
        .into_iter()
        .filter(|c| !idle.iter().any(|b| c.ends_with(&format!("-{b}"))))
        .collect();
    assert_eq!(
        chains,
        Vec::<String>::new(),
        "{when}: nft chains left (idle tenant networks aside: {idle:?})"
    );
    assert_eq!(
        inst.records_left(),
        Vec::<String>::new(),
        "{when}: state left"
    );
}

/// The rainbond pipeline's addressing: a /24 per tenant from 10.64.0.0/12,
/// never the excluded first /24; the gateway in the pod's subnet.
pub fn assert_rainbond_address(addr: Ipv4Net, gw: Ipv4Addr) {
    let supernet: Ipv4Net = "10.64.0.0/12".parse().unwrap();
    let excluded: Ipv4Net = "10.64.0.0/24".parse().unwrap();
    assert!(supernet.contains(&addr.addr()), "{addr} not in {supernet}");
    assert!(
        !excluded.contains(&addr.addr()),
        "{addr} in excluded {excluded}"
    );
    assert_eq!(addr.prefix_len(), 24, "{addr}");
    assert!(
        addr.contains(&gw) && gw != addr.addr(),
        "gateway {gw} for {addr}"
    );
}
