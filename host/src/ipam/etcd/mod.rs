//! The cluster address store: etcd v3, shared by every node.
//!
//! # Key layout
//!
//! Under `<prefix>/ipam/<network>/` (every name segment escaped, see
//! `keys.rs`):
//!
//! ```text
//! pool/<pool>                                  {supernet, subnetLen, exclude}   geometry as first used
//! subnet/<pool>/<tenant>                       {subnet, createdMs}              the tenant's subnet
//! carve/<pool>/<subnet>                        <tenant>                         who owns a carved subnet
//! claim/<pool>/<tenant>/<block>                <node>                           who a block is affine to
//! block/<pool>/<tenant>/<node>/<block>         {node, cidr, used, released, cursor}
//! block/<pool>/<tenant>/<node>/<block>/p/<ord> "<container>/<ifname>"  (leased)  a pending claim
//! handle/<container>/<ifname>                  {tenant, node, state, allocations…} (leased while pending)
//! (under <prefix>/leases/)  <node>             {id, expiresMs}                  the node's claim lease (two-phase only)
//! sticky/<pool>/<tenant>/<owner>               <address>                        an owner's last address
//! ```
//!
//! A tenant subnet is split into **blocks** (`etcd.block_len_v4`/`_v6`,
//! default /26 and /122, or the whole subnet when it is smaller). A block is
//! affine to the node that claimed it; a node allocates from its own blocks,
//! then claims a new one, and only when the subnet has no unclaimed block
//! left borrows a free address from another node's block. Nodes therefore
//! write different keys and rarely contend. A block value is a bitmap of
//! *confirmed* ordinals plus a few cooling-down releases: ~100 bytes for a
//! /26, far from etcd's request limit (calico#5819, whereabouts#497).
//!
//! # Transactions
//!
//! Every change is one etcd transaction whose compares cover everything the
//! decision read: the block's `mod_revision` (`reserve` compares exact
//! values instead, and from hints only the block's: see "Hints";
//! `create_revision == 0` for a block, claim, subnet, carve or pool record
//! being created),
//! the pending key being taken (`create_revision == 0`), and the handle
//! (`create_revision == 0` on reserve, its `mod_revision` afterwards). A
//! failed compare means another writer won: re-plan from fresh data (at
//! most 100 attempts, all within `etcd.timeout_ms`). A reserve's write
//! transaction carries, as its failure branch, the reads the next attempt
//! needs, so a lost compare costs no extra round trip. There is no lock
//! anywhere. In the common case a claim (ADD's [`IpStore::claim`]) and a
//! `reserve` are each **one write transaction**, planned from the node's
//! hint file (below); without usable hints, one read transaction (the
//! handle, the pools, the tenant's subnet record, this node's blocks with
//! their pending keys, and for a two-phase reserve the node's claim lease,
//! in one round trip) and one write. `confirm` in the process that
//! reserved is one write transaction (what the reserve wrote is kept in
//! memory for it, and every use of it is guarded by compares); in another
//! process it reads first. Each write puts the handle in the same
//! transaction as the block change it belongs to, so no state exists in
//! which one is written and the other is not (unlike goodrain/midonet-cni's
//! two writes).
//!
//! # Hints
//!
//! Every ADD is a new `tenet` process, so what a reserve would read is kept
//! between them in a node-local **hint file**, one per (etcd prefix,
//! network): `<state_dir>/etcd-hints/<prefix>@<network>.json`
//! ([`EtcdOptions::hint_dir`]). It holds the network's pool records, and
//! per (pool, tenant) the tenant's subnet record and this node's first four
//! blocks that still have a free address (value, `mod_revision`, pending
//! ordinals seen with when), and the node's claim lease (id, expiry); at
//! most 64 (pool, tenant) entries, least recently used out. Full blocks are
//! left out, so neither the file nor the planning grows with the fill.
//! Every successful reserve rewrites it; confirm and release update the
//! blocks they rewrote (and drop those without room).
//!
//! A hint is never trusted:
//!
//! - A plan made from hints compares: handle absent, pending key absent,
//!   and the block it takes the address in holding exactly the **value**
//!   the plan used. The plan depends on the block's content only, so the
//!   value is the exact guard; unlike a `mod_revision`, it cannot be fooled
//!   by a revision number reused after an etcd restore from backup (or by
//!   another cluster behind the same prefix). The hinted pool and subnet
//!   records are not compared: a hinted plan only takes an address in a
//!   block that exists, and while a block exists its subnet record does,
//!   unchanged, and the pool's geometry with it (a block is created only by
//!   a transaction that compares its subnet; a subnet is deleted only when
//!   no key is left under its blocks, compared in the same transaction, and
//!   never rewritten; a pool record is never rewritten nor deleted). Hints
//!   whose subnet is not one of the pool's subnets holding every hinted
//!   block are not used. Three compares instead of five, two lookups fewer
//!   in etcd on every hinted reserve.
//! - The write's failure branch reads the handle and the hinted blocks with
//!   their pending keys, all that can have made it fail: a stale hint is
//!   re-planned from those fresh values (the rest as hinted), and that read
//!   stays as small as the hint (constant in the fill).
//! - A hinted view is partial. It decides nothing but a success: when the
//!   hinted blocks have no room, the subnet or pool is unknown or gone, a
//!   static address looks taken, or anything else would be an error or
//!   would need more than the view holds, the reserve reads everything as
//!   without hints and decides from that. A sticky owner's reserve always
//!   reads (its previous address is not hinted).
//! - Pending ordinals are only skipped, never relied on; entries older than
//!   one claim TTL are dropped (their lease has expired or they were
//!   confirmed, which rewrote the block).
//! - The file is rewritten in place with one `pwrite`, behind a header
//!   with its length and checksum, without fsync (`hint.rs` says why not a
//!   temp file and a rename). Concurrent `tenet` processes of one node share
//!   it without locks; readers use a whole version or none, the last writer
//!   wins, and a lost update only makes the next hint stale. A missing,
//!   torn, corrupt, foreign (other prefix, network, node or format) or
//!   unreadable file is ignored.
//!
//! # Claims (what ADD does)
//!
//! [`IpStore::claim`] takes the address and makes it permanent in **one
//! transaction**: `If handle absent, pending key of the ordinal absent,
//! block == the value planned from Then put block (bit set, cursor moved),
//! put handle (state confirmed, no lease)`, with the reads the re-plan
//! needs as its failure branch. ADD claims before it configures anything in
//! the pod (see `apply`): an address a pod may carry never depends on a
//! lease, so no lease expiry can hand it to a second pod while a killed
//! ADD's pod still holds it (issue 13, item 3). Crash safety comes from the
//! attachment record, written before the claim: DEL or GC of a killed ADD
//! release its claim by the attachment's key. Since a claim rewrites its
//! block, concurrent claims of one node conflict on the block (whatever
//! the address); the loser re-plans from the returned block at once, and
//! after a lost race starts at another of the node's blocks. A retried ADD
//! gets its claim back (the handle is rewritten as it is, so that its
//! revision moves and `tenetctl ipam gc`, which releases only unchanged
//! handles, cannot free it under the pod); a pending handle of the
//! two-phase API is confirmed.
//!
//! # Two-phase claims and leases
//!
//! The trait's two-phase API (`reserve`, then `confirm`) remains, for
//! callers that need a claim that undoes itself. `reserve` takes an
//! address by creating its **pending key**
//! `block/…/<block>/p/<ordinal>` and the handle (state `pending`), both
//! under the node's claim lease: `<prefix>/leases/<node>` names a lease of
//! `etcd.claim_ttl_s` (default 60 s) that the node's ADDs share while at
//! least half of it is left, and the first ADD that finds it too short
//! grants a new one and publishes it in its own transaction (so the common
//! path grants nothing, and a claim lives between ttl/2 and ttl); the block
//! itself is only compared, not rewritten, so concurrent reserves in one
//! block conflict only when they pick the same ordinal. Readers treat an
//! ordinal as taken when its bit is set *or* its pending key exists.
//! `confirm` sets the bit in the block, deletes the pending key and rewrites
//! the handle without a lease, in one transaction that compares the handle,
//! the block and the pending key are as read (so a claim that expired in
//! between is [`IpamError::ClaimLost`], never half-confirmed).
//!
//! Why this shape: when a process crashes between reserve and confirm, its
//! lease expires and etcd deletes the pending key and the pending handle by
//! itself. The address is then free — no bit was ever set, nothing refers to
//! it — without any cleanup code running anywhere (a lease that expired
//! freed the address without cooldown, as the local store does for a stale
//! claim). Confirmed allocations never depend on a lease. Half the TTL
//! bounds how long a caller may take between reserve and confirm. A retried
//! reserve (same key, still pending) takes the claim over under the current
//! lease. This is also why ADD no longer uses it: an ADD killed after it
//! had configured the pod lost its claim with the lease while the pod kept
//! the address.
//!
//! `release` clears the bits (or deletes the pending keys), records the
//! ordinals as released with the time, and deletes the handle, in one
//! transaction. Released ordinals are not handed out for `etcd.cooldown_s`
//! (default 30 s) — except to a **sticky owner**: a reserve made through
//! [`IpStore::reserve_for_owner`] records `sticky/<pool>/<tenant>/<owner>`
//! and gets that address back on its next reserve whenever it is free.
//!
//! # Tenants
//!
//! Tenant subnets are carved first-fit from the pool's supernet. Unless
//! [`EtcdOptions::allow_tenant_overlap`] is set, a `carve/` key makes each
//! subnet exclusive to one tenant cluster-wide. With overlap allowed (only
//! when the SDN isolates tenants' address spaces: `sdn = "midonet"`, where
//! each tenant has its own router), every tenant carves from the whole
//! supernet, so two tenants can hold the same subnet and even the same
//! address; blocks, pending keys and handles are per tenant, so addresses
//! stay unique within a tenant.
//!
//! Unlike the local store, emptied tenant subnets and blocks stay recorded
//! (the tenant gets the same subnet back); `tenetctl ipam gc --reclaim`
//! removes empty blocks and subnets.
//!
//! # GC
//!
//! Every handle records the node whose ADD made it. [`IpStore::gc`] only
//! looks at this node's handles: another node's pods are never freed by it.
//! Pending handles exist only while their lease lives, so GC keeps them all
//! as in flight; the apply engine passes the attachments that still have a
//! record (ADDs running, whose claims are confirmed already) as valid.
//! `tenetctl ipam gc` adds a grace period and a re-check: a candidate is
//! released only if its handle's revision is unchanged after the grace
//! period and no `applying` record of a live process names it.
//!
//! # Failure
//!
//! Requests go through the exec's connection ([`crate::etcd`]), which
//! moves a request that a member does not serve (down, cut off, in an
//! election, no answer within a quarter of the timeout) to the next member,
//! until `etcd.timeout_ms` for the whole operation. Only then is it
//! [`IpamError::Unavailable`]: CNI code 11 (try again later) for
//! ADD/DEL/GC, code 50 for STATUS ([`IpamError::status_code`]). A request
//! whose answer was lost may have been applied; every write is one guarded
//! transaction, so its retry fails its compare if the first went through,
//! and the re-plan reads back what happened: a claim finds its own handle
//! (and returns it), a confirm finds the claim confirmed, a release finds
//! the handle gone. STATUS asks every member: a quorum with members down is
//! ready, with a warning per member in the log (degraded).
//!
//! # Wiring into the apply engine
//!
//! `EtcdStore::connect_shared(&config, conn)` when `config.store ==
//! StoreKind::Etcd`, on the exec's one [`EtcdConn`] (shared with the
//! MidoNet records; nothing is contacted until the first operation, and
//! each member is authenticated on its first use). The node name is
//! `config.node_name` or the hostname; the hint file and the remembered
//! member live under `config.state_dir` (node-local, like the attachment
//! records). The `reserve` step claims (confirmed, one transaction); its
//! undo is `release` (idempotent), registered before the claim, and the
//! rollback keeps the attachment record when a release fails, so that DEL
//! or GC finish it. A SIGKILL at any step after it leaves a confirmed claim
//! that DEL or GC frees through the record (`host/tests/etcd_crash_root.rs`
//! kills the binary at each step).

mod conn;
mod hint;
mod keys;
mod model;
mod plan;
mod reserve;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use ipnet::IpNet;
use serde::de::DeserializeOwned;

use self::conn::{Conn, Etcd};
use self::keys::{Keys, unesc};
use self::model::{BlockRec, HandleRec, SubnetRec};
use super::pool::ParsedPool;
use super::{
    Allocation, AttachmentKey, ClaimState, GcReport, IpStore, IpamError, TenantSubnet,
    validate_network_name,
};
use crate::config::{Config, SdnKind};
use crate::etcd::{EtcdConn, EtcdSettings};
use crate::plan::AddressSpec;

pub use crate::etcd::EtcdTls;

/// Everything an [`EtcdStore`] needs.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix (`/tenet`): keys live under `<prefix>/ipam/`.
    pub prefix: String,
    /// Bound on any one store operation, retries included.
    pub timeout: Duration,
    /// This node: blocks are affine to it, handles record it, GC is limited
    /// to it.
    pub node_name: String,
    /// Lease TTL of pending claims.
    pub claim_ttl: Duration,
    /// How long released addresses are held back.
    pub cooldown: Duration,
    /// Whether tenants may hold overlapping subnets (only where the SDN
    /// separates tenants' address spaces: MidoNet).
    pub allow_tenant_overlap: bool,
    /// Block prefix length for IPv4 tenant subnets (20–30).
    pub block_len_v4: u8,
    /// Block prefix length for IPv6 tenant subnets (116–126).
    pub block_len_v6: u8,
    /// User name and password for etcd authentication.
    pub user: Option<(String, String)>,
    /// TLS to etcd.
    pub tls: Option<EtcdTls>,
    /// Where this node keeps its reserve hints (node-local; see "Hints" in
    /// the module docs); `None` disables them (every reserve reads first).
    /// From a configuration: `<state_dir>/etcd-hints`.
    pub hint_dir: Option<PathBuf>,
    /// Where the etcd member that answered last is remembered between
    /// execs, so that the next starts there (`<state_dir>/etcd-member`
    /// from a configuration; `None`: not remembered). See [`crate::etcd`].
    pub member_file: Option<PathBuf>,
    /// The clock cooldowns, hints and lease renewal are decided on (the
    /// system's; tests step a [`ManualClock`](crate::ipam::ManualClock)).
    pub clock: std::sync::Arc<dyn crate::ipam::Clock>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints the password or key material.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("node_name", &self.node_name)
            .field("claim_ttl", &self.claim_ttl)
            .field("cooldown", &self.cooldown)
            .field("allow_tenant_overlap", &self.allow_tenant_overlap)
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .field("tls", &self.tls.is_some())
            .field("hint_dir", &self.hint_dir)
            .field("member_file", &self.member_file)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    /// Defaults (those of `[etcd]` in the configuration) for these endpoints
    /// and node.
    pub fn new(endpoints: Vec<String>, node_name: impl Into<String>) -> Self {
        let d = crate::config::EtcdConfig::default();
        EtcdOptions {
            endpoints,
            prefix: d.prefix,
            timeout: Duration::from_millis(d.timeout_ms),
            node_name: node_name.into(),
            claim_ttl: Duration::from_secs(d.claim_ttl_s),
            cooldown: Duration::from_secs(d.cooldown_s),
            allow_tenant_overlap: false,
            block_len_v4: d.block_len_v4,
            block_len_v6: d.block_len_v6,
            user: None,
            tls: None,
            hint_dir: None,
            member_file: None,
            clock: crate::ipam::clock::system(),
        }
    }

    /// From the host configuration: `[etcd]`, `node_name` (else the
    /// hostname), and `sdn` (tenant overlap only with MidoNet). Reads the
    /// password and TLS files; errors name the configuration key.
    pub fn from_config(cfg: &Config) -> Result<Self, IpamError> {
        let e = &cfg.etcd;
        let node_name = match &cfg.node_name {
            Some(n) if !n.is_empty() => n.clone(),
            _ => hostname()?,
        };
        let conn = EtcdSettings::from_config(cfg)?;
        Ok(EtcdOptions {
            endpoints: conn.endpoints,
            prefix: e.prefix.clone(),
            timeout: conn.timeout,
            node_name,
            claim_ttl: Duration::from_secs(e.claim_ttl_s),
            cooldown: Duration::from_secs(e.cooldown_s),
            allow_tenant_overlap: cfg.sdn == SdnKind::Midonet,
            block_len_v4: e.block_len_v4,
            block_len_v6: e.block_len_v6,
            user: conn.user,
            tls: conn.tls,
            hint_dir: Some(cfg.state_dir.join("etcd-hints")),
            member_file: conn.member_file,
            clock: crate::ipam::clock::system(),
        })
    }

    /// The connection settings these options imply (for
    /// [`EtcdConn::open`]).
    pub fn settings(&self) -> EtcdSettings {
        EtcdSettings {
            endpoints: self.endpoints.clone(),
            timeout: self.timeout,
            user: self.user.clone(),
            tls: self.tls.clone(),
            member_file: self.member_file.clone(),
            spread: self.node_name.clone(),
        }
    }

    fn validate(&self) -> Result<(), IpamError> {
        let bad = |reason: String| Err(IpamError::InvalidRequest { reason });
        if !(20..=30).contains(&self.block_len_v4) {
            return bad(format!(
                "etcd.block_len_v4 = {} must lie between 20 and 30",
                self.block_len_v4
            ));
        }
        if !(116..=126).contains(&self.block_len_v6) {
            return bad(format!(
                "etcd.block_len_v6 = {} must lie between 116 and 126",
                self.block_len_v6
            ));
        }
        if self.node_name.is_empty() {
            return bad("node_name is empty".into());
        }
        if self.claim_ttl.is_zero() {
            return bad("etcd.claim_ttl_s must be at least 1".into());
        }
        if !self.prefix.starts_with('/') {
            return bad(format!("etcd.prefix {:?} must start with '/'", self.prefix));
        }
        Ok(())
    }
}

/// The machine's hostname (the default node name).
fn hostname() -> Result<String, IpamError> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| IpamError::io("node_name is unset; reading the hostname", e))?;
    let h = h.trim().to_owned();
    if h.is_empty() {
        return Err(IpamError::InvalidRequest {
            reason: "node_name is unset and the hostname is empty".into(),
        });
    }
    Ok(h)
}

pub(super) fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, IpamError> {
    serde_json::from_slice(v).map_err(|e| IpamError::Corrupt {
        path: key.to_owned(),
        detail: e.to_string(),
    })
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// The block key of a pending key (`<block>/p/<ordinal>`), else None.
fn pend_block(key: &str) -> Option<&str> {
    key.rsplit_once("/p/")
        .filter(|(_, o)| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
        .map(|(b, _)| b)
}

/// One block, for operators (`tenetctl ipam show`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockInfo {
    /// Network.
    pub network: String,
    /// Pool.
    pub pool: String,
    /// Tenant.
    pub tenant: String,
    /// Node the block is affine to.
    pub node: String,
    /// The block.
    pub cidr: IpNet,
    /// Confirmed allocations in it.
    pub used: usize,
    /// Pending claims in it.
    pub pending: usize,
    /// Released addresses still cooling down.
    pub cooling: usize,
}

/// One attachment's record with its node and revision, for GC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleInfo {
    /// Owner.
    pub key: AttachmentKey,
    /// Node whose ADD made it.
    pub node: String,
    /// Phase.
    pub state: ClaimState,
    /// When it was reserved (ms since the epoch).
    pub created_ms: u64,
    /// The handle's mod revision: a release made with it fails if the
    /// handle changed since.
    pub revision: i64,
    /// Its addresses.
    pub allocations: Vec<Allocation>,
}

/// The etcd address store (see the module docs).
pub struct EtcdStore {
    conn: Conn,
    keys: Keys,
    opts: EtcdOptions,
    /// What this instance's last reserves wrote, for their confirm (see
    /// `reserve::Recent`): only ever used under compares, so never stale.
    recent: Mutex<HashMap<AttachmentKey, reserve::Recent>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// A store with its own connection (see [`crate::etcd`]); nothing is
    /// contacted until the first operation. Bad options are
    /// [`IpamError::InvalidRequest`].
    pub fn new(opts: EtcdOptions) -> Result<Self, IpamError> {
        opts.validate()?;
        let conn = Arc::new(EtcdConn::open(&opts.settings())?);
        Self::with_conn(opts, conn)
    }

    /// A store on a connection shared with other users of the cluster (the
    /// MidoNet records): one connection per exec. `opts`' connection
    /// fields are the connection's business then.
    pub fn with_conn(opts: EtcdOptions, conn: Arc<EtcdConn>) -> Result<Self, IpamError> {
        opts.validate()?;
        Ok(EtcdStore {
            conn: Conn::new(conn),
            keys: Keys::new(&opts.prefix),
            opts,
            recent: Mutex::new(HashMap::new()),
        })
    }

    /// The constructor `tenetctl` calls when `store = "etcd"`.
    pub fn connect(cfg: &Config) -> Result<Self, IpamError> {
        Self::new(EtcdOptions::from_config(cfg)?)
    }

    /// The constructor the apply engine calls: the exec's one connection.
    pub fn connect_shared(cfg: &Config, conn: Arc<EtcdConn>) -> Result<Self, IpamError> {
        Self::with_conn(EtcdOptions::from_config(cfg)?, conn)
    }

    /// The connection (failover statistics, the member in use).
    pub fn conn(&self) -> &Arc<EtcdConn> {
        self.conn.shared()
    }

    /// The options in force.
    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    /// Now, on the store's clock ([`EtcdOptions::clock`]).
    pub(super) fn now_ms(&self) -> u64 {
        self.opts.clock.now_ms()
    }

    fn cooldown_ms(&self) -> u64 {
        u64::try_from(self.opts.cooldown.as_millis()).unwrap_or(u64::MAX)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.opts.claim_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// This node's hint file for `network`, when hints are on.
    fn hint_file(&self, network: &str) -> Option<PathBuf> {
        self.opts
            .hint_dir
            .as_deref()
            .map(|d| hint::path(d, &self.opts.prefix, network))
    }

    /// Tells the hint file that a transaction at `rev` rewrote these blocks:
    /// `(key, value written, ordinals whose pending keys it deleted)`. Only
    /// this node's blocks are in the file; others are ignored.
    fn note_blocks(&self, network: &str, rev: i64, written: &[(String, Vec<u8>, Vec<u32>)]) {
        let Some(f) = self.hint_file(network) else {
            return;
        };
        let o = &self.opts;
        let mut f = hint::HintFile::open(f);
        let Some(mut h) = f.load(
            &o.prefix,
            network,
            &o.node_name,
            self.now_ms(),
            self.ttl_ms(),
        ) else {
            return;
        };
        let mut changed = false;
        for (k, v, done) in written {
            changed |= h.block_written(k, v, rev, done);
        }
        if changed {
            f.store(&h);
        }
    }

    /// Best-effort owner of a confirmed address, for error messages.
    async fn owner_of(&self, etcd: &Etcd, net: &str, p: &ParsedPool, ip: IpAddr) -> String {
        let Ok(kvs) = etcd.scan(&self.keys.handles(net), false).await else {
            return "unknown".into();
        };
        kvs.iter()
            .filter_map(|kv| serde_json::from_slice::<HandleRec>(kv.value()).ok())
            .find(|h| {
                h.allocations
                    .iter()
                    .any(|a| a.allocation.pool == p.name && a.allocation.address.addr() == ip)
            })
            .map(|h| format!("{}/{}", h.container_id, h.ifname))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Reads a handle and the blocks (and pending keys) it points at.
    async fn read_handle(
        &self,
        etcd: &Etcd,
        key: &AttachmentKey,
    ) -> Result<Option<(HandleRec, i64, BTreeMap<String, plan::BlockView>)>, IpamError> {
        let hk = self.keys.handle(key);
        let r = etcd.read(vec![(hk.clone(), false)]).await?;
        let Some(kv) = r[0].first() else {
            return Ok(None);
        };
        let h: HandleRec = decode(&hk, kv.value())?;
        let rev = kv.mod_revision();
        let mut ops = Vec::new();
        let mut prefixes = Vec::new();
        let mut seen = HashSet::new();
        for a in &h.allocations {
            let bk = self.block_key(&key.network, &h, a);
            if seen.insert(bk.clone()) {
                // The block and its pending keys (`<block>/p/<ord>`).
                ops.push((bk, true));
                prefixes.push(
                    self.keys
                        .blocks(&key.network, &a.allocation.pool, &h.tenant),
                );
            }
        }
        let mut blocks = BTreeMap::new();
        if !ops.is_empty() {
            let r = etcd.read(ops).await?;
            for (kvs, prefix) in r.iter().zip(&prefixes) {
                blocks.extend(reserve::collect_blocks(prefix, kvs)?);
            }
        }
        Ok(Some((h, rev, blocks)))
    }

    fn block_key(&self, net: &str, h: &HandleRec, a: &model::HandleAlloc) -> String {
        self.keys
            .block(net, &a.allocation.pool, &h.tenant, &a.block_node, a.block)
    }

    fn remember(&self, key: &AttachmentKey, r: reserve::Recent) {
        let mut m = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // A long-lived store (a daemon) must not grow without bound.
        if m.len() >= 1024 {
            m.clear();
        }
        m.insert(key.clone(), r);
    }

    fn forget(&self, key: &AttachmentKey) -> Option<reserve::Recent> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
    }

    /// Confirms `key`'s pending claim (see [`IpStore::confirm`]).
    async fn confirm_with(&self, etcd: &Etcd, key: &AttachmentKey) -> Result<(), IpamError> {
        // Common case: this instance made the reservation, so the write can
        // go out without reading first; its compares catch any change.
        if let Some(r) = self.forget(key) {
            let blocks: BTreeMap<String, plan::BlockView> = r
                .blocks
                .into_iter()
                .map(|(bk, rec, rev)| {
                    let pend = r
                        .handle
                        .allocations
                        .iter()
                        .filter(|a| self.block_key(&key.network, &r.handle, a) == bk)
                        .map(|a| (a.ordinal, (String::new(), r.revision)))
                        .collect();
                    (
                        bk.clone(),
                        plan::BlockView {
                            rec,
                            rev,
                            val: Vec::new(),
                            pend,
                        },
                    )
                })
                .collect();
            if self
                .confirm_txn(etcd, key, r.handle, r.revision, blocks)
                .await?
            {
                return Ok(());
            }
        }
        loop {
            let Some((h, rev, blocks)) = self.read_handle(etcd, key).await? else {
                return Err(IpamError::ClaimLost { key: key.clone() });
            };
            if h.state == ClaimState::Confirmed {
                return Ok(());
            }
            if self.confirm_txn(etcd, key, h, rev, blocks).await? {
                return Ok(());
            }
        }
    }

    /// The confirm transaction for a pending handle at `rev` and its blocks
    /// as read; false when a compare failed. Tells the hint file.
    async fn confirm_txn(
        &self,
        etcd: &Etcd,
        key: &AttachmentKey,
        mut h: HandleRec,
        rev: i64,
        mut blocks: BTreeMap<String, plan::BlockView>,
    ) -> Result<bool, IpamError> {
        {
            let hk = self.keys.handle(key);
            let mut compares = vec![Compare::mod_revision(hk.as_str(), CompareOp::Equal, rev)];
            let mut ops = Vec::new();
            let now = self.now_ms();
            let mut done: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for a in &h.allocations {
                let bk = self.block_key(&key.network, &h, a);
                done.entry(bk.clone()).or_default().push(a.ordinal);
                let Some(b) = blocks.get_mut(&bk) else {
                    return Err(IpamError::ClaimLost { key: key.clone() });
                };
                let Some((_, prev)) = b.pend.get(&a.ordinal) else {
                    // The lease expired between our two reads.
                    return Err(IpamError::ClaimLost { key: key.clone() });
                };
                let pk = keys::Keys::pend(&bk, a.ordinal);
                compares.push(Compare::mod_revision(pk.as_str(), CompareOp::Equal, *prev));
                ops.push(TxnOp::delete(pk, None));
                b.rec.set_used(a.ordinal, true);
                b.rec.released.remove(&a.ordinal);
                if !a.fixed {
                    b.rec.cursor = (a.ordinal + 1) % b.rec.size();
                }
            }
            let mut written = Vec::new();
            for (bk, b) in &mut blocks {
                b.rec.prune(now, self.cooldown_ms());
                compares.push(Compare::mod_revision(bk.as_str(), CompareOp::Equal, b.rev));
                let v = encode(&b.rec);
                ops.push(TxnOp::put(bk.as_str(), v.clone(), None));
                written.push((bk.clone(), v, done.remove(bk).unwrap_or_default()));
            }
            h.state = ClaimState::Confirmed;
            // No lease: a confirmed allocation never expires.
            ops.push(TxnOp::put(hk.as_str(), encode(&h), None));
            let resp = etcd.txn(Txn::new().when(compares).and_then(ops)).await?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                self.note_blocks(&key.network, rev, &written);
            }
            Ok(resp.succeeded())
        }
    }

    /// Frees `key`'s addresses; with `expect`, only if the handle's revision
    /// is still that (GC's re-check). `Ok(None)` when it changed.
    async fn release_async(
        &self,
        etcd: Etcd,
        key: &AttachmentKey,
        expect: Option<i64>,
    ) -> Result<Option<Vec<Allocation>>, IpamError> {
        self.forget(key);
        // Whether a release transaction of this call may have been applied
        // without its answer arriving (then failed its compare on retry).
        let mut maybe_done = false;
        loop {
            let Some((h, rev, mut blocks)) = self.read_handle(&etcd, key).await? else {
                return Ok(if expect.is_some() && !maybe_done {
                    None
                } else {
                    Some(Vec::new())
                });
            };
            if expect.is_some_and(|e| e != rev) {
                return Ok(None);
            }
            let hk = self.keys.handle(key);
            let mut compares = vec![Compare::mod_revision(hk.as_str(), CompareOp::Equal, rev)];
            let mut ops = vec![TxnOp::delete(hk.as_str(), None)];
            let now = self.now_ms();
            let mut done: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for a in &h.allocations {
                let bk = self.block_key(&key.network, &h, a);
                if h.state == ClaimState::Pending {
                    ops.push(TxnOp::delete(keys::Keys::pend(&bk, a.ordinal), None));
                    done.entry(bk.clone()).or_default().push(a.ordinal);
                }
                if let Some(b) = blocks.get_mut(&bk) {
                    if h.state == ClaimState::Confirmed {
                        b.rec.set_used(a.ordinal, false);
                    }
                    b.rec.released.insert(a.ordinal, now);
                }
            }
            let mut written = Vec::new();
            for (bk, b) in &mut blocks {
                b.rec.prune(now, self.cooldown_ms());
                compares.push(Compare::mod_revision(bk.as_str(), CompareOp::Equal, b.rev));
                let v = encode(&b.rec);
                ops.push(TxnOp::put(bk.as_str(), v.clone(), None));
                written.push((bk.clone(), v, done.remove(bk).unwrap_or_default()));
            }
            let was = etcd.uncertain();
            let resp = etcd.txn(Txn::new().when(compares).and_then(ops)).await?;
            maybe_done |= !was && etcd.uncertain();
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or_default();
                self.note_blocks(&key.network, rev, &written);
                return Ok(Some(h.allocations()));
            }
        }
    }

    async fn handles_async(&self, etcd: &Etcd, net: &str) -> Result<Vec<HandleInfo>, IpamError> {
        let mut out = Vec::new();
        for kv in etcd.scan(&self.keys.handles(net), false).await? {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            let h: HandleRec = decode(&k, kv.value())?;
            out.push(HandleInfo {
                key: h.key(net),
                node: h.node.clone(),
                state: h.state,
                created_ms: h.created_ms,
                revision: kv.mod_revision(),
                allocations: h.allocations(),
            });
        }
        Ok(out)
    }

    async fn networks_async(
        &self,
        etcd: &Etcd,
        network: Option<&str>,
    ) -> Result<Vec<String>, IpamError> {
        if let Some(n) = network {
            validate_network_name(n)?;
            return Ok(vec![n.to_owned()]);
        }
        let mut names: Vec<String> = etcd
            .scan(self.keys.root(), true)
            .await?
            .iter()
            .filter_map(|kv| self.keys.network_of(&String::from_utf8_lossy(kv.key())))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Every handle of `network` with its node and revision.
    pub fn handles(&self, network: &str) -> Result<Vec<HandleInfo>, IpamError> {
        validate_network_name(network)?;
        self.conn.run("listing handles", |etcd| async move {
            self.handles_async(&etcd, network).await
        })
    }

    /// Releases `key` only if its handle is still at `revision` (a
    /// reconciler's re-check). True when it was released.
    pub fn release_if_unchanged(
        &self,
        key: &AttachmentKey,
        revision: i64,
    ) -> Result<bool, IpamError> {
        key.validate()?;
        self.conn.run("releasing", |etcd| async move {
            Ok(self
                .release_async(etcd, key, Some(revision))
                .await?
                .is_some())
        })
    }

    /// Every block, of one network or all.
    pub fn blocks(&self, network: Option<&str>) -> Result<Vec<BlockInfo>, IpamError> {
        self.conn.run("listing blocks", |etcd| async move {
            let mut out = Vec::new();
            let now = self.now_ms();
            for n in self.networks_async(&etcd, network).await? {
                let prefix = self.keys.all_blocks(&n);
                let kvs = etcd.scan(&prefix, false).await?;
                let mut pending: BTreeMap<String, usize> = BTreeMap::new();
                for kv in &kvs {
                    let k = String::from_utf8_lossy(kv.key()).into_owned();
                    if let Some(bk) = pend_block(&k) {
                        *pending.entry(bk.to_owned()).or_default() += 1;
                    }
                }
                for kv in &kvs {
                    let k = String::from_utf8_lossy(kv.key()).into_owned();
                    let rest = k.strip_prefix(&prefix).unwrap_or_default();
                    let parts: Vec<&str> = rest.split('/').collect();
                    let [pool, tenant, _, _] = parts.as_slice() else {
                        continue;
                    };
                    let b: BlockRec = decode(&k, kv.value())?;
                    out.push(BlockInfo {
                        network: n.clone(),
                        pool: unesc(pool).unwrap_or_default(),
                        tenant: unesc(tenant).unwrap_or_default(),
                        node: b.node.clone(),
                        cidr: b.cidr,
                        used: b.count_used(),
                        pending: pending.get(&k).copied().unwrap_or(0),
                        cooling: b
                            .released
                            .keys()
                            .filter(|o| b.is_cooling(**o, now, self.cooldown_ms()))
                            .count(),
                    });
                }
            }
            Ok(out)
        })
    }

    /// Removes blocks with nothing allocated, pending or cooling, and then
    /// tenant subnets with no block left, whose last change is older than the
    /// cooldown. Each removal compares what it read. Returns how many blocks
    /// and subnets went.
    pub fn reclaim_empty(&self, network: &str) -> Result<(usize, usize), IpamError> {
        validate_network_name(network)?;
        self.conn.run("reclaiming empty blocks", |etcd| async move {
            let now = self.now_ms();
            let cd = self.cooldown_ms();
            let k = &self.keys;
            let prefix = k.all_blocks(network);
            let kvs = etcd.scan(&prefix, false).await?;
            let with_pending: HashSet<String> = kvs
                .iter()
                .filter_map(|kv| {
                    let s = String::from_utf8_lossy(kv.key()).into_owned();
                    pend_block(&s).map(str::to_owned)
                })
                .collect();
            let mut blocks_gone = 0;
            let mut live_subnets: HashSet<(String, String)> = HashSet::new();
            for kv in &kvs {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let rest = key.strip_prefix(&prefix).unwrap_or_default();
                let parts: Vec<&str> = rest.split('/').collect();
                let [pool, tenant, _, _] = parts.as_slice() else {
                    continue;
                };
                let (pool, tenant) = (
                    unesc(pool).unwrap_or_default(),
                    unesc(tenant).unwrap_or_default(),
                );
                let mut b: BlockRec = decode(&key, kv.value())?;
                b.prune(now, cd);
                let idle =
                    b.count_used() == 0 && b.released.is_empty() && !with_pending.contains(&key);
                if idle {
                    let claim = k.claim(network, &pool, &tenant, b.cidr);
                    let txn = Txn::new()
                        .when([
                            Compare::mod_revision(
                                key.as_str(),
                                CompareOp::Equal,
                                kv.mod_revision(),
                            ),
                            // No pending key appeared since the scan.
                            Compare::create_revision(format!("{key}/p/"), CompareOp::Equal, 0)
                                .with_prefix(),
                        ])
                        .and_then([
                            TxnOp::delete(key.as_str(), None),
                            TxnOp::delete(claim, None),
                        ]);
                    if etcd.txn(txn).await?.succeeded() {
                        blocks_gone += 1;
                        continue;
                    }
                }
                live_subnets.insert((pool, tenant));
            }
            let mut subnets_gone = 0;
            let sprefix = k.subnets(network);
            for kv in etcd.scan(&sprefix, false).await? {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let rest = key.strip_prefix(&sprefix).unwrap_or_default();
                let Some((pool, tenant)) = rest.split_once('/') else {
                    continue;
                };
                let (pool, tenant) = (
                    unesc(pool).unwrap_or_default(),
                    unesc(tenant).unwrap_or_default(),
                );
                if live_subnets.contains(&(pool.clone(), tenant.clone())) {
                    continue;
                }
                let s: SubnetRec = decode(&key, kv.value())?;
                if now < s.created_ms.saturating_add(cd) {
                    continue;
                }
                let bprefix = k.blocks(network, &pool, &tenant);
                let txn = Txn::new()
                    .when([
                        Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                        Compare::create_revision(bprefix, CompareOp::Equal, 0).with_prefix(),
                    ])
                    .and_then([
                        TxnOp::delete(key.as_str(), None),
                        TxnOp::delete(k.carve(network, &pool, s.subnet), None),
                    ]);
                if etcd.txn(txn).await?.succeeded() {
                    subnets_gone += 1;
                }
            }
            Ok((blocks_gone, subnets_gone))
        })
    }

    /// Every key under the store's prefix with its value (for tests and
    /// debugging).
    pub fn dump(&self) -> Result<Vec<(String, String)>, IpamError> {
        self.conn.run("reading", |etcd| async move {
            Ok(etcd
                .scan(self.keys.root(), false)
                .await?
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect())
        })
    }
}

impl IpStore for EtcdStore {
    fn reserve(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
    ) -> Result<Vec<Allocation>, IpamError> {
        self.reserve_for_owner(key, tenant, requests, None)
    }

    fn reserve_for_owner(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
        owner: Option<&str>,
    ) -> Result<Vec<Allocation>, IpamError> {
        key.validate()?;
        let out = self.conn.run("reserving", |etcd| {
            reserve::reserve(
                self,
                etcd,
                key,
                tenant,
                requests,
                owner,
                ClaimState::Pending,
            )
        })?;
        tracing::debug!(%key, tenant, addresses = ?out.iter().map(|a| a.address).collect::<Vec<_>>(),
            "reserved");
        Ok(out)
    }

    /// One transaction: the claim is confirmed (no lease) when it commits;
    /// planned from the node's hints in the common case, as `reserve` is.
    fn claim(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
    ) -> Result<Vec<Allocation>, IpamError> {
        key.validate()?;
        let out = self.conn.run("claiming", |etcd| {
            reserve::reserve(
                self,
                etcd,
                key,
                tenant,
                requests,
                None,
                ClaimState::Confirmed,
            )
        })?;
        tracing::debug!(%key, tenant, addresses = ?out.iter().map(|a| a.address).collect::<Vec<_>>(),
            "claimed");
        Ok(out)
    }

    fn confirm(&self, key: &AttachmentKey) -> Result<(), IpamError> {
        key.validate()?;
        self.conn.run("confirming", |etcd| async move {
            self.confirm_with(&etcd, key).await
        })
    }

    fn release(&self, key: &AttachmentKey) -> Result<Vec<Allocation>, IpamError> {
        key.validate()?;
        let out = self.conn.run("releasing", |etcd| async move {
            Ok(self
                .release_async(etcd, key, None)
                .await?
                .unwrap_or_default())
        })?;
        if !out.is_empty() {
            tracing::debug!(%key, count = out.len(), "released");
        }
        Ok(out)
    }

    fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<GcReport, IpamError> {
        validate_network_name(network)?;
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|(c, i)| (c.as_str(), i.as_str()))
            .collect();
        let handles = self.handles(network)?;
        let mut report = GcReport::default();
        for h in handles {
            if h.node != self.opts.node_name
                || valid.contains(&(h.key.container_id.as_str(), h.key.ifname.as_str()))
            {
                continue;
            }
            if h.state == ClaimState::Pending {
                // The handle exists only while its ADD's lease does.
                report.kept_in_flight.push(h.key);
                continue;
            }
            match self.release_if_unchanged(&h.key, h.revision) {
                Ok(true) => report.released.push(h.key),
                Ok(false) => {}
                Err(e) => {
                    report.error_codes.push(e.cni_code());
                    report.errors.push(format!("{}: {e}", h.key));
                }
            }
        }
        if !report.released.is_empty() {
            tracing::info!(network, released = ?report.released, "gc freed attachments");
        }
        Ok(report)
    }

    fn list(
        &self,
        network: Option<&str>,
    ) -> Result<Vec<(AttachmentKey, Allocation, ClaimState)>, IpamError> {
        self.conn.run("listing", |etcd| async move {
            let mut out = Vec::new();
            for n in self.networks_async(&etcd, network).await? {
                for h in self.handles_async(&etcd, &n).await? {
                    for a in h.allocations {
                        out.push((h.key.clone(), a, h.state));
                    }
                }
            }
            Ok(out)
        })
    }

    fn tenant_subnets(&self, network: Option<&str>) -> Result<Vec<TenantSubnet>, IpamError> {
        self.conn.run("listing subnets", |etcd| async move {
            let mut out = Vec::new();
            for n in self.networks_async(&etcd, network).await? {
                let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
                for h in self.handles_async(&etcd, &n).await? {
                    for a in h.allocations {
                        *count.entry((a.pool, a.tenant)).or_default() += 1;
                    }
                }
                let prefix = self.keys.subnets(&n);
                for kv in etcd.scan(&prefix, false).await? {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let rest = key.strip_prefix(&prefix).unwrap_or_default();
                    let Some((pool, tenant)) = rest.split_once('/') else {
                        continue;
                    };
                    let (pool, tenant) = (
                        unesc(pool).unwrap_or_default(),
                        unesc(tenant).unwrap_or_default(),
                    );
                    let s: SubnetRec = decode(&key, kv.value())?;
                    let g = super::pool::Geom::of(s.subnet);
                    out.push(TenantSubnet {
                        network: n.clone(),
                        allocated: count
                            .get(&(pool.clone(), tenant.clone()))
                            .copied()
                            .unwrap_or(0),
                        pool,
                        tenant,
                        subnet: s.subnet,
                        gateway: super::pool::to_ip(g.gateway(), g.v4),
                        empty_since_ms: None,
                    });
                }
            }
            out.sort_by(|a, b| {
                (&a.network, &a.pool, &a.tenant).cmp(&(&b.network, &b.pool, &b.tenant))
            });
            Ok(out)
        })
    }

    /// Every member's status, then a linearizable read (it needs a leader
    /// and a quorum, and proves the credentials): no quorum is
    /// [`IpamError::Unavailable`] (STATUS code 50); a quorum with members
    /// down, cut off or raising alarms is ready, with a warning per member
    /// in the log (stderr by default).
    fn status(&self) -> Result<(), IpamError> {
        let probe = format!("{}status", self.keys.root());
        let h = self.conn.shared().health(&probe);
        if let Err(e) = &h.quorum {
            return Err(IpamError::Unavailable {
                detail: format!(
                    "no quorum answers: {}; members: {}",
                    e.message(),
                    h.summary()
                ),
            });
        }
        let down = h.unhealthy();
        if !down.is_empty() {
            for m in &down {
                tracing::warn!(member = %m.url, state = %m, "etcd member unavailable; the cluster has quorum (degraded)");
            }
            tracing::warn!(
                healthy = h.members.len() - down.len(),
                members = h.members.len(),
                "etcd cluster degraded: {}",
                h.summary()
            );
        }
        Ok(())
    }
}
