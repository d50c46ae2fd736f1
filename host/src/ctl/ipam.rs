//! `tenetctl ipam`: look at and reconcile the address store, local or etcd.
//!
//! - `ls`: every attachment's addresses (owner, tenant, pool, address, phase).
//! - `show`: pools with their tenant subnets and usage; for etcd also the
//!   node-affine blocks (used, pending, cooling).
//! - `gc`: a reconciler for attachments the runtime no longer knows: takes
//!   the valid (container id, ifname) pairs, waits a grace period, re-checks
//!   that each candidate is unchanged, and only then releases it. Pending
//!   claims are never touched (their ADD is running; in etcd they expire by
//!   themselves), nor are claims of ADDs still running on this node (an
//!   `applying` attachment record whose process lives: ADD claims
//!   permanently before it configures the pod).
//!
//! The store comes from the tenet configuration (`store`, `[etcd]`,
//! `state_dir`) unless `--store` says otherwise.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use super::{CtlError, process_env};
use crate::config::{Config, StoreKind};
use crate::ipam::{
    AttachmentKey, ClaimState, EtcdStore, IpStore, IpamError, LocalOptions, LocalStore,
};

/// `tenetctl ipam` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum IpamCmd {
    /// List every attachment's addresses.
    Ls(ListArgs),
    /// Pools, tenant subnets, usage and (etcd) blocks.
    Show(ListArgs),
    /// Release attachments that are not in the valid list (after a grace
    /// period and a re-check).
    Gc(GcArgs),
}

/// Which store to open.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// `local` or `etcd` (default: `store` from the tenet configuration).
    #[arg(long, value_name = "KIND")]
    pub store: Option<String>,
    /// State directory of the local store (default: from the configuration).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// etcd endpoints, comma-separated (default: from the configuration).
    #[arg(long, value_name = "URLS")]
    pub endpoints: Option<String>,
    /// etcd key prefix (default: from the configuration).
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,
}

/// Arguments of `ls` and `show`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only this network.
    #[arg(long)]
    pub network: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Arguments of `gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// The network to reconcile.
    #[arg(long)]
    pub network: String,
    /// File of valid attachments: `container-id ifname` per line, or the
    /// JSON array of CNI's `cni.dev/valid-attachments`
    /// (`[{"containerID":…,"ifname":…}]`); `-` reads stdin. Without it no
    /// attachment is valid.
    #[arg(long, value_name = "FILE")]
    pub valid: Option<PathBuf>,
    /// Seconds a candidate must stay unlisted and unchanged before release.
    #[arg(long, default_value_t = 0, value_name = "SECS")]
    pub grace: u64,
    /// etcd only: reconcile this node's attachments (default: this node).
    /// Use it for a node that left the cluster.
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// etcd only: afterwards remove empty blocks and tenant subnets.
    #[arg(long)]
    pub reclaim: bool,
    /// Print what would be released, release nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// An opened store, and the state directory of this node's attachment
/// records.
struct Opened {
    store: Store,
    state_dir: PathBuf,
    /// Whether the store's attachments are this node's (no `--node` for
    /// another node): only then do this node's records say what is in
    /// flight.
    own_node: bool,
}

/// An opened store.
enum Store {
    Local(LocalStore),
    Etcd(Box<EtcdStore>),
}

impl Store {
    fn ipam(&self) -> &dyn IpStore {
        match self {
            Store::Local(s) => s,
            Store::Etcd(s) => s.as_ref(),
        }
    }
}

fn ipam_err(e: IpamError) -> CtlError {
    CtlError::Message(format!("{e} (code {})", e.cni_code()))
}

fn open(a: &StoreArgs, node: Option<&str>) -> Result<Store, CtlError> {
    open_with_state(a, node).map(|o| o.store)
}

fn open_with_state(a: &StoreArgs, node: Option<&str>) -> Result<Opened, CtlError> {
    let mut cfg = Config::load(&process_env(), None).map_err(CtlError::from_err)?;
    let kind = match a.store.as_deref() {
        None => cfg.store,
        Some("local") => StoreKind::Local,
        Some("etcd") => StoreKind::Etcd,
        Some(other) => {
            return Err(CtlError::Message(format!(
                "--store: {other:?} is not a store (use local or etcd)"
            )));
        }
    };
    if let Some(d) = &a.state_dir {
        cfg.state_dir = d.clone();
    }
    if let Some(e) = &a.endpoints {
        cfg.etcd.endpoints = e.split(',').map(|s| s.trim().to_owned()).collect();
    }
    if let Some(p) = &a.prefix {
        cfg.etcd.prefix = p.clone();
    }
    let own_node = node.is_none_or(|n| cfg.node_name.as_deref() == Some(n));
    if let Some(n) = node {
        cfg.node_name = Some(n.to_owned());
    }
    let state_dir = cfg.state_dir.clone();
    let store = match kind {
        StoreKind::Local => {
            if node.is_some() {
                return Err(CtlError::Message(
                    "--node applies to --store etcd only".into(),
                ));
            }
            LocalStore::open(&cfg.state_dir, LocalOptions::default())
                .map(Store::Local)
                .map_err(|e| {
                    CtlError::Message(format!("--state-dir {}: {e}", cfg.state_dir.display()))
                })
        }
        StoreKind::Etcd => EtcdStore::connect(&cfg)
            .map(|s| Store::Etcd(Box::new(s)))
            .map_err(|e| CtlError::Message(format!("etcd {}: {e}", cfg.etcd.endpoints.join(",")))),
    }?;
    Ok(Opened {
        store,
        state_dir,
        own_node,
    })
}

/// The attachments of `network` whose ADD is running on this node (an
/// `applying` record whose writer lives): their claims are permanent
/// already, and not to be touched.
fn in_flight(
    state_dir: &std::path::Path,
    network: &str,
) -> Result<HashSet<AttachmentKey>, CtlError> {
    let records = crate::apply::Records::new(state_dir);
    Ok(records
        .list(Some(network))
        .map_err(|e| {
            CtlError::Message(format!(
                "attachment records in {}: {e}",
                state_dir.display()
            ))
        })?
        .into_iter()
        .filter(|r| {
            r.phase == crate::apply::Phase::Applying
                && crate::ipam::ProcessIdentity {
                    pid: r.writer_pid,
                    start_time: r.writer_start,
                }
                .is_alive()
        })
        .map(|r| r.key)
        .collect())
}

/// Runs an `ipam` subcommand.
pub fn run(cmd: &IpamCmd, out: &mut dyn Write) -> Result<i32, CtlError> {
    match cmd {
        IpamCmd::Ls(a) => ls(a, out),
        IpamCmd::Show(a) => show(a, out),
        IpamCmd::Gc(a) => gc(a, out),
    }
}

fn state(s: ClaimState) -> &'static str {
    match s {
        ClaimState::Pending => "pending",
        ClaimState::Confirmed => "confirmed",
    }
}

fn ls(a: &ListArgs, out: &mut dyn Write) -> Result<i32, CtlError> {
    let store = open(&a.store, None)?;
    let rows = store.ipam().list(a.network.as_deref()).map_err(ipam_err)?;
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(k, al, st)| {
                serde_json::json!({
                    "network": k.network, "containerId": k.container_id, "ifname": k.ifname,
                    "tenant": al.tenant, "pool": al.pool, "address": al.address.to_string(),
                    "gateway": al.gateway.to_string(), "state": state(*st),
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).map_err(CtlError::from_err)?
        )
        .map_err(CtlError::from_err)?;
        return Ok(0);
    }
    let line = |cols: [&str; 7]| {
        format!(
            "{:<12} {:<24} {:<8} {:<10} {:<10} {:<22} {}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6]
        )
    };
    writeln!(
        out,
        "{}",
        line([
            "NETWORK",
            "CONTAINER",
            "IFNAME",
            "TENANT",
            "POOL",
            "ADDRESS",
            "STATE"
        ])
    )
    .map_err(CtlError::from_err)?;
    for (k, al, st) in &rows {
        let address = al.address.to_string();
        let row = line([
            k.network.as_str(),
            k.container_id.as_str(),
            k.ifname.as_str(),
            al.tenant.as_str(),
            al.pool.as_str(),
            address.as_str(),
            state(*st),
        ]);
        writeln!(out, "{row}").map_err(CtlError::from_err)?;
    }
    Ok(0)
}

fn show(a: &ListArgs, out: &mut dyn Write) -> Result<i32, CtlError> {
    let store = open(&a.store, None)?;
    let net = a.network.as_deref();
    let subnets = store.ipam().tenant_subnets(net).map_err(ipam_err)?;
    let rows = store.ipam().list(net).map_err(ipam_err)?;
    let blocks = match &store {
        Store::Etcd(s) => Some(s.blocks(net).map_err(ipam_err)?),
        Store::Local(_) => None,
    };
    let pending = rows.iter().filter(|r| r.2 == ClaimState::Pending).count();
    if a.json {
        let v = serde_json::json!({
            "subnets": subnets,
            "blocks": blocks,
            "attachments": rows.len(),
            "pending": pending,
        });
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&v).map_err(CtlError::from_err)?
        )
        .map_err(CtlError::from_err)?;
        return Ok(0);
    }
    // Per pool: tenants and allocated addresses.
    let mut pools: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    for s in &subnets {
        let e = pools
            .entry((s.network.clone(), s.pool.clone()))
            .or_default();
        e.0 += 1;
        e.1 += s.allocated;
    }
    let p = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(CtlError::from_err);
    p(
        out,
        format!(
            "{:<12} {:<12} {:>8} {:>10}",
            "NETWORK", "POOL", "TENANTS", "ALLOCATED"
        ),
    )?;
    for ((n, pool), (t, al)) in &pools {
        p(out, format!("{n:<12} {pool:<12} {t:>8} {al:>10}"))?;
    }
    p(out, String::new())?;
    p(
        out,
        format!(
            "{:<12} {:<12} {:<12} {:<20} {:<16} {:>9}",
            "NETWORK", "POOL", "TENANT", "SUBNET", "GATEWAY", "ALLOCATED"
        ),
    )?;
    for s in &subnets {
        p(
            out,
            format!(
                "{:<12} {:<12} {:<12} {:<20} {:<16} {:>9}",
                s.network,
                s.pool,
                s.tenant,
                s.subnet.to_string(),
                s.gateway.to_string(),
                s.allocated
            ),
        )?;
    }
    if let Some(blocks) = &blocks {
        p(out, String::new())?;
        p(
            out,
            format!(
                "{:<12} {:<12} {:<12} {:<16} {:<22} {:>5} {:>8} {:>8}",
                "NETWORK", "POOL", "TENANT", "NODE", "BLOCK", "USED", "PENDING", "COOLING"
            ),
        )?;
        for b in blocks {
            p(
                out,
                format!(
                    "{:<12} {:<12} {:<12} {:<16} {:<22} {:>5} {:>8} {:>8}",
                    b.network,
                    b.pool,
                    b.tenant,
                    b.node,
                    b.cidr.to_string(),
                    b.used,
                    b.pending,
                    b.cooling
                ),
            )?;
        }
    }
    p(out, String::new())?;
    p(
        out,
        format!("{} attachments ({pending} pending)", rows.len()),
    )?;
    Ok(0)
}

/// Reads the valid list (`--valid`).
fn read_valid(path: Option<&PathBuf>) -> Result<HashSet<(String, String)>, CtlError> {
    let Some(path) = path else {
        return Ok(HashSet::new());
    };
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CtlError::Message(format!("--valid -: reading stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CtlError::Message(format!("--valid {}: {e}", path.display())))?
    };
    let bad = |why: String| CtlError::Message(format!("--valid {}: {why}", path.display()));
    if text.trim_start().starts_with('[') {
        #[derive(serde::Deserialize)]
        struct Att {
            #[serde(rename = "containerID")]
            container_id: String,
            ifname: String,
        }
        let list: Vec<Att> = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        return Ok(list
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect());
    }
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(f), None) => {
                out.insert((c.to_owned(), f.to_owned()));
            }
            _ => {
                return Err(bad(format!(
                    "line {}: expected `container-id ifname`, got {line:?}",
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

/// A GC candidate: owner and what must still be true to release it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Candidate {
    key: AttachmentKey,
    /// etcd: the handle's revision; local: 0 (its lock makes the release
    /// itself atomic; the re-check is that it is still listed, confirmed).
    revision: i64,
}

fn candidates(
    store: &Store,
    network: &str,
    valid: &HashSet<(String, String)>,
) -> Result<(Vec<Candidate>, usize), CtlError> {
    let unlisted = |k: &AttachmentKey| !valid.contains(&(k.container_id.clone(), k.ifname.clone()));
    let mut pending = 0;
    let mut out = Vec::new();
    match store {
        Store::Etcd(s) => {
            let me = &s.options().node_name;
            for h in s.handles(network).map_err(ipam_err)? {
                if &h.node != me || !unlisted(&h.key) {
                    continue;
                }
                if h.state == ClaimState::Pending {
                    pending += 1;
                } else {
                    out.push(Candidate {
                        key: h.key,
                        revision: h.revision,
                    });
                }
            }
        }
        Store::Local(s) => {
            let mut seen = HashSet::new();
            for (k, _, st) in s.list(Some(network)).map_err(ipam_err)? {
                if !unlisted(&k) || !seen.insert(k.clone()) {
                    continue;
                }
                if st == ClaimState::Pending {
                    pending += 1;
                } else {
                    out.push(Candidate {
                        key: k,
                        revision: 0,
                    });
                }
            }
        }
    }
    Ok((out, pending))
}

fn gc(a: &GcArgs, out: &mut dyn Write) -> Result<i32, CtlError> {
    let valid = read_valid(a.valid.as_ref())?;
    let opened = open_with_state(&a.store, a.node.as_deref())?;
    let store = &opened.store;
    if a.reclaim && matches!(store, Store::Local(_)) {
        return Err(CtlError::Message(
            "--reclaim applies to --store etcd only".into(),
        ));
    }
    let (first, _) = candidates(store, &a.network, &valid)?;
    let mut confirmed = first;
    let mut pending = 0;
    if a.grace > 0 {
        std::thread::sleep(Duration::from_secs(a.grace));
    }
    // Second observation: only what was a candidate both times, unchanged.
    let (second, p) = candidates(store, &a.network, &valid)?;
    pending += p;
    let second: HashSet<Candidate> = second.into_iter().collect();
    confirmed.retain(|c| second.contains(c));
    // Read after the handles (an ADD writes its record before it claims):
    // a claim whose ADD runs here has a live `applying` record.
    if opened.own_node {
        let running = in_flight(&opened.state_dir, &a.network)?;
        let before = confirmed.len();
        confirmed.retain(|c| !running.contains(&c.key));
        pending += before - confirmed.len();
    }
    let mut released = 0;
    let mut changed = 0;
    for c in &confirmed {
        if a.dry_run {
            writeln!(out, "would release {}", c.key).map_err(CtlError::from_err)?;
            continue;
        }
        let done = match store {
            Store::Etcd(s) => s.release_if_unchanged(&c.key, c.revision),
            Store::Local(s) => s.release(&c.key).map(|v| !v.is_empty()),
        }
        .map_err(ipam_err)?;
        if done {
            released += 1;
            writeln!(out, "released {}", c.key).map_err(CtlError::from_err)?;
        } else {
            changed += 1;
        }
    }
    if a.reclaim
        && !a.dry_run
        && let Store::Etcd(s) = store
    {
        let (blocks, subnets) = s.reclaim_empty(&a.network).map_err(ipam_err)?;
        writeln!(
            out,
            "reclaimed {blocks} empty blocks, {subnets} empty subnets"
        )
        .map_err(CtlError::from_err)?;
    }
    writeln!(
        out,
        "{released} released, {pending} pending kept (ADD in flight), {changed} changed since the first look"
    )
    .map_err(CtlError::from_err)?;
    Ok(0)
}
