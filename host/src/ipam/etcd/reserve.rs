//! `reserve` and `claim`: plan every request from a view of etcd, and
//! commit the whole reservation in one transaction whose compares cover
//! everything the plan used: a pending claim under the node's lease
//! (`reserve`, two-phase) or a confirmed one that never expires (`claim`,
//! what ADD does: see "Claims" in the module docs). The view comes from the node's hint file (no read at all), from the
//! failure branch of the previous attempt's transaction (fresh reads that
//! came back with the lost compare), or from one read transaction. A failed
//! compare means another writer got there first: re-plan from the reads the
//! failure returned (bounded by the deadline).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, TxnOp};
use ipnet::IpNet;

use super::conn::{Etcd, Reads, Written};
use super::hint::{BlockHint, HintFile, Hints, MAX_BLOCKS, TenantHint, Val};
use super::keys::{BlockKey, Keys, parse_block_key, unesc};
use super::model::{BlockRec, HandleAlloc, HandleRec, NodeLease, PoolRec, SubnetRec};
use super::{EtcdStore, decode};
use crate::ipam::pool::{Geom, ParsedPool, check_same_request, parse_static, to_ip, to_u128};
use crate::ipam::{Allocation, AttachmentKey, ClaimState, IpamError};
use crate::plan::AddressRequest;

/// Most attempts one reserve makes before giving up with code 11.
const MAX_ATTEMPTS: u32 = 100;

/// What a successful reserve wrote, so that confirm in the same process can
/// skip its reads (its transaction compares all of it).
#[derive(Debug, Clone)]
pub(super) struct Recent {
    pub handle: HandleRec,
    /// Revision of the reserve transaction: the handle's and the pending
    /// keys' mod revision.
    pub revision: i64,
    /// Blocks as they were when the reserve committed, with their revision.
    pub blocks: Vec<(String, BlockRec, i64)>,
}

/// etcd refused a put because its lease no longer exists (gRPC
/// `NotFound`, typed by the connection as [`IpamError::LeaseLost`]).
fn is_lease_gone(e: &IpamError) -> bool {
    matches!(e, IpamError::LeaseLost { .. })
}

/// A block as read in this attempt, with its pending ordinals.
#[derive(Debug, Clone)]
pub(super) struct BlockView {
    pub rec: BlockRec,
    /// Mod revision; 0 for a block this attempt claims.
    pub rev: i64,
    /// The value as stored (empty for a block this attempt claims): a
    /// reserve compares it too, so a hint whose revision number was reused
    /// (etcd restored from a backup) cannot pass for the current block.
    pub val: Vec<u8>,
    /// Pending ordinal → (holder "container/ifname", mod revision).
    pub pend: BTreeMap<u32, (String, i64)>,
}

/// Blocks and their pending keys from a scan of `prefix` ([`Keys::blocks`]
/// or [`Keys::node_blocks`]).
pub(super) fn collect_blocks(
    tenant_prefix: &str,
    kvs: &[KeyValue],
) -> Result<BTreeMap<String, BlockView>, IpamError> {
    let mut blocks = BTreeMap::new();
    let mut pends = Vec::new();
    for kv in kvs {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        match parse_block_key(tenant_prefix, &key) {
            Some(BlockKey::Block { block_key, .. }) => {
                let rec: BlockRec = decode(&key, kv.value())?;
                blocks.insert(
                    block_key.clone(),
                    BlockView {
                        rec,
                        rev: kv.mod_revision(),
                        val: kv.value().to_vec(),
                        pend: BTreeMap::new(),
                    },
                );
            }
            Some(BlockKey::Pend { block_key, ord }) => pends.push((
                block_key,
                ord,
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )),
            None => {}
        }
    }
    for (bk, ord, holder, rev) in pends {
        // A pending key always sits beside its block (they are created in
        // one transaction, and blocks with pending keys are never deleted).
        if let Some(b) = blocks.get_mut(&bk) {
            b.pend.insert(ord, (holder, rev));
        }
    }
    Ok(blocks)
}

/// Compares and operations of the transaction being built. Keys are
/// compared and written at most once (etcd refuses a txn that puts one key
/// twice).
#[derive(Default)]
struct Writes {
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    compared: HashSet<String>,
    written: HashSet<String>,
}

impl Writes {
    fn absent(&mut self, key: &str) {
        if self.compared.insert(key.to_owned()) {
            self.compares
                .push(Compare::create_revision(key, CompareOp::Equal, 0));
        }
    }
    /// `key` still holds `val` as read, or, without a value, is still at
    /// `rev`. The plan depends on the record's content only, so its value
    /// is the exact guard: it cannot be fooled by a revision number reused
    /// after an etcd restore (a hint from before it), and it costs etcd one
    /// lookup where comparing both would cost two.
    fn unchanged(&mut self, key: &str, rev: i64, val: &[u8]) {
        if self.compared.insert(key.to_owned()) {
            self.compares.push(if val.is_empty() {
                Compare::mod_revision(key, CompareOp::Equal, rev)
            } else {
                Compare::value(key, CompareOp::Equal, val.to_vec())
            });
        }
    }
    /// Compares a pool or subnet record the plan used, when the view is
    /// complete (read from etcd). A plan from a partial view (hints) leaves
    /// them out: it only ever takes an address in a hinted block that
    /// exists, and that block's exact-value compare implies them. A block
    /// is created only by a transaction that compares its subnet record; a
    /// subnet record is deleted only when no key is left under its blocks
    /// (compared in the same transaction) and never rewritten; a pool
    /// record is never rewritten nor deleted. So while the block exists,
    /// its tenant's subnet record does too, and the pool's geometry, hence
    /// the subnet's CIDR (the aligned subnet holding the block), is the
    /// hinted one. Two fewer lookups in etcd and ~200 fewer bytes in
    /// the transaction on every hinted reserve.
    fn record_used(&mut self, complete: bool, key: &str, rev: i64, val: &[u8]) {
        if complete {
            self.unchanged(key, rev, val);
        }
    }
    fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) {
        if self.written.insert(key.to_owned()) {
            self.ops.push(TxnOp::put(
                key,
                value,
                lease.map(|l| PutOptions::new().with_lease(l)),
            ));
        }
    }
}

/// A record with its revision and stored value.
type Versioned<T> = (T, i64, Vec<u8>);

/// What the view holds for one pool of the request.
struct PoolView {
    subnet: Option<Versioned<SubnetRec>>,
    sticky: Option<IpAddr>,
    /// Keys of this node's blocks, in address order.
    own: Vec<String>,
    /// Whether every block of the tenant (all nodes) and the claims were read.
    all_loaded: bool,
    /// Whether the claims were read.
    claims_loaded: bool,
    claimed: BTreeSet<IpNet>,
}

/// Why planning stopped.
enum PlanError {
    /// A real answer (made from a complete view).
    Ipam(IpamError),
    /// The view is partial (hints, or the hinted blocks re-read) and the
    /// plan needs more than it holds: read everything and plan again.
    Incomplete,
    /// The view is older than something read after it (another process of
    /// this tenant carved its subnet meanwhile): read everything again.
    Stale,
}

impl From<IpamError> for PlanError {
    fn from(e: IpamError) -> Self {
        PlanError::Ipam(e)
    }
}

/// Which keys one read covers (phase 1, or the failure branch of a write),
/// and where each answer sits in the responses.
///
/// A full set reads everything a plan can use. A partial one (the failure
/// branch of a write planned from hints) reads only what can have made
/// that write fail: the handle and the hinted blocks with their pending
/// keys; the pools, the subnets and the lease stay as hinted (see
/// [`Writes::record_used`]).
#[derive(Debug, Clone)]
struct ReadSet {
    /// `(key, is_prefix)`: the handle first.
    ops: Vec<(String, bool)>,
    /// True when it covers all of this node's blocks; false when only the
    /// hinted ones (the view is then partial).
    full: bool,
    /// The pools' prefix get (full sets only).
    pools: Option<usize>,
    /// Per pool of the request: the subnet get (full sets only), the block
    /// gets, the sticky get.
    per_pool: Vec<(Option<usize>, Vec<usize>, Option<usize>)>,
    /// The node lease get (full sets only).
    lease: Option<usize>,
}

/// One attempt's view of etcd, from a read or from the hints.
struct View {
    /// `None` when it was not read (from hints: the write compares that it
    /// is absent).
    handle: Option<(HandleRec, i64)>,
    pools: BTreeMap<String, Versioned<PoolRec>>,
    /// Per pool of the request: subnet, this node's blocks, sticky address.
    per_pool: Vec<PoolSnap>,
    lease: Option<NodeLease>,
    /// Whether all of this node's blocks are in it (else only some).
    complete: bool,
}

impl View {
    /// Takes the pools, subnets and lease of `hinted` (what a partial
    /// failure branch does not read).
    fn keep_hinted_records(&mut self, hinted: View) {
        self.pools = hinted.pools;
        self.lease = hinted.lease;
        for (p, h) in self.per_pool.iter_mut().zip(hinted.per_pool) {
            p.subnet = h.subnet;
        }
    }
}

struct PoolSnap {
    subnet: Option<Versioned<SubnetRec>>,
    blocks: BTreeMap<String, BlockView>,
    sticky: Option<IpAddr>,
}

/// Where the next attempt's view comes from.
enum Source {
    /// The hint file: no read at all.
    Hints,
    /// The failure branch of the last write: fresh, no extra round trip.
    Returned(Reads, ReadSet),
    /// A read transaction of everything.
    Read,
}

/// One reservation attempt's state.
struct Attempt<'a> {
    s: &'a EtcdStore,
    etcd: &'a Etcd,
    key: &'a AttachmentKey,
    tenant: &'a str,
    owner: Option<&'a str>,
    holder: String,
    now: u64,
    /// What the claim becomes: pending under `lease`, or confirmed.
    want: ClaimState,
    lease: Option<i64>,
    /// Compares this reserve lost so far (see `scan_block`).
    races: u32,
    /// Whether the view holds all of this node's blocks; a partial view may
    /// only produce a plan within what it holds (see [`PlanError`]).
    complete: bool,
    pools: BTreeMap<String, Versioned<PoolRec>>,
    views: BTreeMap<String, PoolView>,
    blocks: BTreeMap<String, BlockView>,
    /// Subnets carved in this attempt, by pool, with the value written.
    carved: BTreeMap<String, (Geom, Vec<u8>)>,
    /// Each planned pool's tenant subnet.
    geoms: BTreeMap<String, Geom>,
    /// Blocks claimed in this attempt.
    new_blocks: HashSet<String>,
    /// Addresses taken earlier in this same call, by pool.
    taken: BTreeMap<String, HashSet<u128>>,
    /// Blocks a confirmed claim sets bits in (written once, at the end).
    touched: BTreeSet<String>,
    /// The values written for them, for the hints.
    written: BTreeMap<String, Vec<u8>>,
    w: Writes,
    rng: u64,
}

fn holder_of(key: &AttachmentKey) -> String {
    format!("{}/{}", key.container_id, key.ifname)
}

/// The keys a reserve of `names` reads (see [`ReadSet`]): with `hinted`,
/// only those blocks (with their pending keys), else all of this node's.
fn read_set(
    s: &EtcdStore,
    key: &AttachmentKey,
    tenant: &str,
    names: &[&str],
    owner: Option<&str>,
    hinted: Option<&[Vec<String>]>,
    want: ClaimState,
) -> ReadSet {
    let k = &s.keys;
    let net = key.network.as_str();
    let full = hinted.is_none();
    let mut ops = vec![(k.handle(key), false)];
    let pools = full.then(|| {
        ops.push((k.pools(net), true));
        ops.len() - 1
    });
    let mut per_pool = Vec::with_capacity(names.len());
    for (j, n) in names.iter().enumerate() {
        let subnet = full.then(|| {
            ops.push((k.subnet(net, n, tenant), false));
            ops.len() - 1
        });
        let mut blocks = Vec::new();
        match hinted {
            Some(h) => {
                for bk in &h[j] {
                    blocks.push(ops.len());
                    // The block and its `<block>/p/<ord>` keys.
                    ops.push((bk.clone(), true));
                }
            }
            None => {
                blocks.push(ops.len());
                ops.push((k.node_blocks(net, n, tenant, &s.opts.node_name), true));
            }
        }
        let sticky = owner.map(|o| {
            ops.push((k.sticky(net, n, tenant, o), false));
            ops.len() - 1
        });
        per_pool.push((subnet, blocks, sticky));
    }
    // A confirmed claim needs no lease.
    let lease = (full && want == ClaimState::Pending).then(|| {
        ops.push((k.node_lease(&s.opts.node_name), false));
        ops.len() - 1
    });
    ReadSet {
        ops,
        full,
        pools,
        per_pool,
        lease,
    }
}

/// The view a read returned.
fn parse_reads(
    s: &EtcdStore,
    key: &AttachmentKey,
    tenant: &str,
    names: &[&str],
    reads: &Reads,
    set: &ReadSet,
) -> Result<View, IpamError> {
    let k = &s.keys;
    let net = key.network.as_str();
    let none = Vec::new();
    let at = |i: usize| reads.get(i).unwrap_or(&none);
    let handle = match at(0).first() {
        Some(kv) => Some((decode(&k.handle(key), kv.value())?, kv.mod_revision())),
        None => None,
    };
    let mut pools = BTreeMap::new();
    for kv in set.pools.map_or(&none, at) {
        let kk = String::from_utf8_lossy(kv.key()).into_owned();
        let name = kk
            .strip_prefix(&k.pools(net))
            .and_then(unesc)
            .unwrap_or_default();
        pools.insert(
            name,
            (
                decode(&kk, kv.value())?,
                kv.mod_revision(),
                kv.value().to_vec(),
            ),
        );
    }
    let mut per_pool = Vec::with_capacity(names.len());
    for (n, (si, bis, sti)) in names.iter().zip(&set.per_pool) {
        let subnet = match si.and_then(|i| at(i).first()) {
            Some(kv) => Some((
                decode::<SubnetRec>(&k.subnet(net, n, tenant), kv.value())?,
                kv.mod_revision(),
                kv.value().to_vec(),
            )),
            None => None,
        };
        let prefix = k.blocks(net, n, tenant);
        let mut blocks = BTreeMap::new();
        for bi in bis {
            blocks.extend(collect_blocks(&prefix, at(*bi))?);
        }
        // Only this node's blocks (a hinted key's prefix could also match
        // a longer key).
        let mine = k.node_blocks(net, n, tenant, &s.opts.node_name);
        blocks.retain(|bk, _| bk.starts_with(&mine));
        let sticky = sti.and_then(|i| {
            at(i)
                .first()
                .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok())
        });
        per_pool.push(PoolSnap {
            subnet,
            blocks,
            sticky,
        });
    }
    let lease = set
        .lease
        .and_then(|i| at(i).first())
        .and_then(|kv| serde_json::from_slice::<NodeLease>(kv.value()).ok());
    Ok(View {
        handle,
        pools,
        per_pool,
        lease,
        complete: set.full,
    })
}

/// The view the hints give, or `None` when they do not cover every pool of
/// the request (unknown pool, tenant without a subnet or without a hinted
/// block), do not decode, or do not hold together: a plan from hints
/// compares only the block it takes an address in and relies on the pool
/// and subnet records that block implies (see [`Writes::record_used`]), so
/// the hinted subnet must be one of the pool's subnets and hold every
/// hinted block.
fn view_from_hints(h: &Hints, tenant: &str, names: &[&str]) -> Option<View> {
    let mut pools = BTreeMap::new();
    for (name, v) in &h.pools {
        let rec: PoolRec = serde_json::from_str(&v.value).ok()?;
        pools.insert(name.clone(), (rec, v.rev, v.value.clone().into_bytes()));
    }
    let mut per_pool = Vec::with_capacity(names.len());
    for n in names {
        let t = h.tenant(n, tenant)?;
        if !pools.contains_key(*n) || t.blocks.is_empty() {
            return None;
        }
        let subnet: SubnetRec = serde_json::from_str(&t.subnet.value).ok()?;
        let pool = &pools[*n].0;
        if subnet.subnet.prefix_len() != pool.subnet_len || !pool.supernet.contains(&subnet.subnet)
        {
            return None;
        }
        let mut blocks = BTreeMap::new();
        for b in &t.blocks {
            let rec: BlockRec = serde_json::from_str(&b.val.value).ok()?;
            if !subnet.subnet.contains(&rec.cidr) {
                return None;
            }
            blocks.insert(
                b.key.clone(),
                BlockView {
                    rec,
                    rev: b.val.rev,
                    val: b.val.value.clone().into_bytes(),
                    pend: b.pend.keys().map(|o| (*o, (String::new(), 0))).collect(),
                },
            );
        }
        per_pool.push(PoolSnap {
            subnet: Some((subnet, t.subnet.rev, t.subnet.value.clone().into_bytes())),
            blocks,
            sticky: None,
        });
    }
    Some(View {
        handle: None,
        pools,
        per_pool,
        lease: h.lease,
        complete: false,
    })
}

/// Reserves `requests` for `key`: a pending claim under the node's lease
/// (`want = Pending`, [`IpStore::reserve`](crate::ipam::IpStore::reserve))
/// or a confirmed claim in the same one transaction (`want = Confirmed`,
/// [`IpStore::claim`](crate::ipam::IpStore::claim)).
#[allow(clippy::too_many_arguments)]
pub(super) async fn reserve(
    s: &EtcdStore,
    etcd: Etcd,
    key: &AttachmentKey,
    tenant: &str,
    requests: &[AddressRequest],
    owner: Option<&str>,
    want: ClaimState,
) -> Result<Vec<Allocation>, IpamError> {
    if tenant.is_empty() {
        return Err(IpamError::InvalidRequest {
            reason: format!("{key}: empty tenant"),
        });
    }
    if owner.is_some_and(str::is_empty) {
        return Err(IpamError::InvalidRequest {
            reason: format!("{key}: empty sticky owner"),
        });
    }
    // Everything about the request itself is checked before any I/O.
    let mut parsed: Vec<ParsedPool> = Vec::with_capacity(requests.len());
    for r in requests {
        let p = ParsedPool::parse(r)?;
        if let Some(q) = parsed.iter().find(|q| q.name == p.name)
            && (q.supernet != p.supernet || q.subnet_len != p.subnet_len)
        {
            return Err(IpamError::InvalidRequest {
                reason: format!(
                    "pool {} is given two different definitions in one request",
                    p.name
                ),
            });
        }
        parsed.push(p);
    }
    let mut names: Vec<&str> = Vec::new();
    for p in &parsed {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }

    let k = &s.keys;
    let net = key.network.as_str();
    let ttl_ms = u64::try_from(s.opts.claim_ttl.as_millis()).unwrap_or(u64::MAX);
    // Opened once: read now, rewritten through the same descriptor.
    let mut hint_file = s.hint_file(net).map(HintFile::open);
    let hints = hint_file
        .as_mut()
        .and_then(|f| f.load(&s.opts.prefix, net, &s.opts.node_name, s.now_ms(), ttl_ms));
    // A sticky owner's previous address is not hinted: read.
    let mut source = if hints.is_some() && owner.is_none() && !requests.is_empty() {
        Source::Hints
    } else {
        Source::Read
    };
    // A lease this call granted (id, expiry), and whether the node's shared
    // lease proved unusable (revoked or expired early).
    let mut granted: Option<(i64, u64)> = None;
    let mut distrust_shared = false;
    let mut rng = seed();
    // Lost compares so far: what spreads and backs off the next plans (a
    // partial view that did not do is no race).
    let mut races = 0u32;
    // Plans that found the view older than a later read (see
    // `PlanError::Stale`).
    let mut stale = 0u32;
    // Built only when used: the hinted path never reads everything.
    let full = std::cell::OnceCell::new();
    let full_set = || full.get_or_init(|| read_set(s, key, tenant, &names, owner, None, want));
    for attempt in 0..MAX_ATTEMPTS {
        // Phase 1: the view (one read at most; none from hints).
        let view = match std::mem::replace(&mut source, Source::Read) {
            Source::Hints => match hints
                .as_ref()
                .and_then(|h| view_from_hints(h, tenant, &names))
            {
                Some(v) => v,
                None => {
                    let r = etcd.read(full_set().ops.clone()).await?;
                    parse_reads(s, key, tenant, &names, &r, full_set())?
                }
            },
            Source::Returned(r, set) => {
                let mut v = parse_reads(s, key, tenant, &names, &r, &set)?;
                if !set.full {
                    // The partial failure branch read the handle and the
                    // blocks; the rest is as hinted.
                    match hints
                        .as_ref()
                        .and_then(|h| view_from_hints(h, tenant, &names))
                    {
                        Some(h) => v.keep_hinted_records(h),
                        None => {
                            source = Source::Read;
                            continue;
                        }
                    }
                }
                v
            }
            Source::Read => {
                let r = etcd.read(full_set().ops.clone()).await?;
                parse_reads(s, key, tenant, &names, &r, full_set())?
            }
        };

        // A pending claim's lease: the node's current one while it has at
        // least half a TTL left (no grant on the common path), else a new
        // one, published for the node's next ADDs in the same transaction.
        // A confirmed claim has none.
        let (lease, publish) = if want == ClaimState::Pending {
            let now = s.now_ms();
            let usable = |l: &NodeLease| l.expires_ms >= now.saturating_add(ttl_ms / 2);
            let shared = view.lease.filter(|l| !distrust_shared && usable(l));
            match (shared, granted) {
                (Some(l), _) => (Some(l), None),
                (None, Some((id, exp)))
                    if usable(&NodeLease {
                        id,
                        expires_ms: exp,
                    }) =>
                {
                    let l = NodeLease {
                        id,
                        expires_ms: exp,
                    };
                    (Some(l), Some(l))
                }
                _ => {
                    let id = etcd.grant(s.opts.claim_ttl).await?;
                    let exp = now.saturating_add(ttl_ms);
                    granted = Some((id, exp));
                    let l = NodeLease {
                        id,
                        expires_ms: exp,
                    };
                    (Some(l), Some(l))
                }
            }
        } else {
            (None, None)
        };
        let lease_id = lease.map(|l| l.id);
        let lease_key = k.node_lease(&s.opts.node_name);
        let publish = |w: &mut Writes| {
            if let Some(l) = &publish {
                w.put(&lease_key, super::encode(l), None);
            }
        };

        if let Some((h, hrev)) = &view.handle {
            check_same_request(key, &h.tenant, &h.allocations(), tenant, requests)?;
            let hk = k.handle(key);
            match (h.state, want) {
                (ClaimState::Confirmed, ClaimState::Pending) => return Ok(h.allocations()),
                (ClaimState::Confirmed, ClaimState::Confirmed) => {
                    // A retried ADD (or this call's own earlier attempt,
                    // whose answer was lost): the same claim. Rewritten as
                    // it is, so that its revision moves: a reconciler that
                    // looked at it before this ADD and releases only
                    // unchanged handles (`tenetctl ipam gc`) cannot free it
                    // under the pod.
                    let mut w = Writes::default();
                    w.unchanged(&hk, *hrev, &[]);
                    w.put(&hk, super::encode(h), None);
                    match etcd.write_or_read(w.compares, w.ops, &[]).await? {
                        Written::Done(_) => return Ok(h.allocations()),
                        Written::Lost(_) => continue,
                    }
                }
                (ClaimState::Pending, ClaimState::Confirmed) => {
                    // A two-phase reserve of this attachment left it
                    // pending: confirm it (or, if its lease ran out
                    // meanwhile, start over).
                    match s.confirm_with(&etcd, key).await {
                        Ok(()) => return Ok(h.allocations()),
                        Err(IpamError::ClaimLost { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                (ClaimState::Pending, ClaimState::Pending) => {}
            }
            // A retried ADD takes the pending claim over: same addresses,
            // re-leased so the new process has the whole TTL.
            let mut w = Writes::default();
            w.unchanged(&hk, *hrev, &[]);
            w.put(&hk, super::encode(h), lease_id);
            for a in &h.allocations {
                let bk = k.block(net, &a.allocation.pool, tenant, &a.block_node, a.block);
                w.put(
                    &Keys::pend(&bk, a.ordinal),
                    holder_of(key).into_bytes(),
                    lease_id,
                );
            }
            publish(&mut w);
            match etcd.write_or_read(w.compares, w.ops, &full_set().ops).await {
                Ok(Written::Done(_)) => return Ok(h.allocations()),
                Ok(Written::Lost(r)) => source = Source::Returned(r, full_set().clone()),
                Err(e) if is_lease_gone(&e) => {
                    distrust_shared = true;
                    granted = None;
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        if requests.is_empty() {
            return Ok(Vec::new());
        }

        let complete = view.complete;
        let mut a = Attempt {
            s,
            etcd: &etcd,
            key,
            tenant,
            owner,
            holder: holder_of(key),
            now: s.now_ms(),
            want,
            lease: lease_id,
            races,
            complete,
            pools: view.pools,
            views: BTreeMap::new(),
            blocks: BTreeMap::new(),
            carved: BTreeMap::new(),
            geoms: BTreeMap::new(),
            new_blocks: HashSet::new(),
            taken: BTreeMap::new(),
            touched: BTreeSet::new(),
            written: BTreeMap::new(),
            w: Writes::default(),
            rng,
        };
        for (n, snap) in names.iter().zip(view.per_pool) {
            // Address order (the keys' string order is not).
            let mut own_keys: Vec<(u128, String)> = snap
                .blocks
                .iter()
                .map(|(k, b)| (to_u128(b.rec.cidr.network()), k.clone()))
                .collect();
            own_keys.sort();
            let own_keys: Vec<String> = own_keys.into_iter().map(|(_, k)| k).collect();
            a.blocks.extend(snap.blocks);
            a.views.insert(
                n.to_string(),
                PoolView {
                    subnet: snap.subnet,
                    sticky: snap.sticky,
                    own: own_keys,
                    all_loaded: false,
                    claims_loaded: false,
                    claimed: BTreeSet::new(),
                },
            );
        }

        let mut allocs = Vec::with_capacity(requests.len());
        let mut incomplete = false;
        for (req, p) in requests.iter().zip(&parsed) {
            match a.plan_one(req, p).await {
                Ok(x) => allocs.push(x),
                // A partial view decides nothing but a success: anything
                // else (no room in the hinted blocks, a static address
                // that looks taken, …) is decided again from a full read.
                Err(PlanError::Incomplete) => {
                    incomplete = true;
                    break;
                }
                Err(PlanError::Ipam(_)) if !complete => {
                    incomplete = true;
                    break;
                }
                Err(PlanError::Ipam(e)) => return Err(e),
                Err(PlanError::Stale) => {
                    stale += 1;
                    if stale > 2 {
                        return Err(IpamError::Corrupt {
                            path: k.subnet(net, &p.name, tenant),
                            detail: format!(
                                "tenant {tenant} has a carved subnet in pool {} but no \
                                 subnet record",
                                p.name
                            ),
                        });
                    }
                    incomplete = true;
                    break;
                }
            }
        }
        rng = a.rng;
        if incomplete {
            tracing::debug!(%key, attempt, "the partial view does not do; reading");
            source = Source::Read;
            continue;
        }
        let rec = HandleRec {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            tenant: tenant.to_owned(),
            node: s.opts.node_name.clone(),
            state: want,
            created_ms: a.now,
            owner: owner.map(str::to_owned),
            allocations: allocs,
        };
        let hk = k.handle(key);
        a.w.absent(&hk);
        a.w.put(&hk, super::encode(&rec), lease_id);
        publish(&mut a.w);
        // A confirmed claim's blocks, with their new bits, once each.
        a.write_touched();
        let touched: Vec<(String, BlockRec, Option<i64>)> = rec
            .allocations
            .iter()
            .map(|h| {
                let bk = k.block(net, &h.allocation.pool, tenant, &h.block_node, h.block);
                let b = &a.blocks[&bk];
                let rev = (!a.new_blocks.contains(&bk)).then_some(b.rev);
                (bk, b.rec.clone(), rev)
            })
            .collect();
        // What the failure branch reads: everything after a full view, the
        // same (few) blocks after a partial one, so that a stale hint costs
        // neither an extra round trip nor a read that grows with the fill.
        let else_set = if complete {
            full_set().clone()
        } else {
            let hinted: Vec<Vec<String>> = names.iter().map(|n| a.views[*n].own.clone()).collect();
            read_set(s, key, tenant, &names, owner, Some(&hinted), want)
        };
        let w = std::mem::take(&mut a.w);
        match etcd.write_or_read(w.compares, w.ops, &else_set.ops).await {
            Ok(Written::Done(r)) => {
                // Remember what confirm would otherwise read again; every
                // use of it is guarded by compares on these revisions.
                if want == ClaimState::Pending {
                    s.remember(
                        key,
                        Recent {
                            handle: rec.clone(),
                            revision: r,
                            blocks: touched
                                .into_iter()
                                .map(|(bk, b, rev)| (bk, b, rev.unwrap_or(r)))
                                .collect(),
                        },
                    );
                }
                if let Some(f) = &mut hint_file {
                    let prior = hints
                        .unwrap_or_else(|| Hints::empty(&s.opts.prefix, net, &s.opts.node_name));
                    f.store(&a.hints_after(prior, &parsed, r, lease));
                }
                return Ok(rec.allocations());
            }
            Ok(Written::Lost(r)) => {
                if !complete {
                    tracing::debug!(%key, attempt, "stale hint; re-planning from the returned reads");
                } else {
                    tracing::debug!(%key, attempt, "reserve lost a race; re-planning");
                }
                source = Source::Returned(r, else_set);
                races += 1;
            }
            Err(e) if is_lease_gone(&e) => {
                distrust_shared = true;
                granted = None;
                continue;
            }
            Err(e) => return Err(e),
        }
        if races >= 2 {
            let ms = 1 + next_rand(&mut rng) % u64::from(races.min(20) * 2);
            etcd.backoff(Duration::from_millis(ms)).await;
        }
    }
    Err(IpamError::Unavailable {
        detail: format!(
            "{key}: reserve lost {MAX_ATTEMPTS} races for the same addresses; try again"
        ),
    })
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let addr = &t as *const u64 as u64;
    (t ^ (u64::from(std::process::id()) << 32) ^ addr.rotate_left(17)) | 1
}

/// xorshift64*: spreads concurrent writers over different free addresses.
fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Tiny stable hash (FNV-1a) of a node name: where its borrowing starts.
fn node_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Attempt<'_> {
    /// Puts every block a confirmed claim set bits in, with its final
    /// value (cooled-down releases pruned); each was compared by
    /// `plan_one` (its value as read, or absent when claimed now).
    fn write_touched(&mut self) {
        let cd = self.s.cooldown_ms();
        for bk in std::mem::take(&mut self.touched) {
            let b = self.blocks.get_mut(&bk).expect("touched block");
            b.rec.prune(self.now, cd);
            let v = super::encode(&b.rec);
            self.w.put(&bk, v.clone(), None);
            self.written.insert(bk, v);
        }
    }

    fn refuse(&self, p: &ParsedPool, x: u128, reason: String) -> IpamError {
        IpamError::StaticOutOfRange {
            address: to_ip(x, p.v4),
            pool: p.name.clone(),
            tenant: self.tenant.to_owned(),
            reason,
        }
    }

    /// The hints after this attempt committed at revision `rev` (under
    /// `lease`, for a pending claim): `prior` with the pools, and for each pool of the request the
    /// tenant's subnet and this node's first [`MAX_BLOCKS`] blocks that still
    /// have a free address (counting what this attempt took as pending).
    fn hints_after(
        &self,
        mut prior: Hints,
        parsed: &[ParsedPool],
        rev: i64,
        lease: Option<NodeLease>,
    ) -> Hints {
        let at = |r: i64| if r == 0 { rev } else { r };
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        if lease.is_some() {
            prior.lease = lease;
        }
        prior.pools = self
            .pools
            .iter()
            .map(|(n, (_, r, v))| {
                (
                    n.clone(),
                    Val {
                        value: text(v),
                        rev: at(*r),
                    },
                )
            })
            .collect();
        let me = &self.s.opts.node_name;
        let mut done = HashSet::new();
        for p in parsed {
            if !done.insert(p.name.as_str()) {
                continue;
            }
            let (Some(g), Some(view)) = (self.geoms.get(&p.name), self.views.get(&p.name)) else {
                continue;
            };
            let subnet = match (&view.subnet, self.carved.get(&p.name)) {
                (Some((_, r, v)), _) => Val {
                    value: text(v),
                    rev: at(*r),
                },
                (None, Some((_, v))) => Val {
                    value: text(v),
                    rev,
                },
                (None, None) => continue,
            };
            // Taken out, not cloned: `put_tenant` replaces it below.
            let old = prior
                .tenants
                .iter()
                .position(|t| t.pool == p.name && t.tenant == self.tenant)
                .map(|i| prior.tenants.remove(i));
            let mut own: Vec<(u128, &String)> = view
                .own
                .iter()
                .filter(|bk| self.blocks.get(*bk).is_some_and(|b| &b.rec.node == me))
                .map(|bk| (to_u128(self.blocks[bk].rec.cidr.network()), bk))
                .collect();
            own.sort();
            let mut blocks = Vec::new();
            for (_, bk) in own {
                let b = &self.blocks[bk];
                let size = b.rec.size();
                if b.rec.count_used() + b.pend.len() >= size as usize
                    || !(0..size).any(|o| self.is_free(p, *g, b, o, true))
                {
                    continue;
                }
                let seen = |o: &u32| {
                    old.as_ref()
                        .and_then(|t| t.blocks.iter().find(|x| &x.key == bk))
                        .and_then(|x| x.pend.get(o).copied())
                        .unwrap_or(self.now)
                };
                // What this transaction wrote (a confirmed claim's blocks),
                // else the value as read (or, for a block claimed now by a
                // pending claim, as created).
                let (val, vrev) = match self.written.get(bk) {
                    Some(v) => (v.clone(), rev),
                    None if self.new_blocks.contains(bk) => (super::encode(&b.rec), rev),
                    None => (b.val.clone(), at(b.rev)),
                };
                blocks.push(BlockHint {
                    key: bk.clone(),
                    val: Val {
                        value: text(&val),
                        rev: vrev,
                    },
                    pend: b.pend.keys().map(|o| (*o, seen(o))).collect(),
                });
                if blocks.len() >= MAX_BLOCKS {
                    break;
                }
            }
            prior.put_tenant(TenantHint {
                pool: p.name.clone(),
                tenant: self.tenant.to_owned(),
                used_ms: self.now,
                subnet,
                blocks,
            });
        }
        prior
    }

    fn block_len(&self, p: &ParsedPool) -> u8 {
        let o = &self.s.opts;
        let b = if p.v4 { o.block_len_v4 } else { o.block_len_v6 };
        b.max(p.subnet_len)
    }

    fn block_of(&self, p: &ParsedPool, x: u128) -> IpNet {
        IpNet::new(to_ip(x, p.v4), self.block_len(p))
            .expect("block length checked")
            .trunc()
    }

    /// Plans one address; records its compares and writes.
    async fn plan_one(
        &mut self,
        req: &AddressRequest,
        p: &ParsedPool,
    ) -> Result<HandleAlloc, PlanError> {
        let k = self.s.keys.clone();
        let net = self.key.network.clone();
        self.check_pool(p)?;
        let stat = match &req.static_address {
            Some(sa) => Some(parse_static(p, self.tenant, sa)?),
            None => None,
        };
        let geom = self.tenant_subnet(p, stat).await?;
        self.geoms.insert(p.name.clone(), geom);

        let mut fixed = true;
        let (bk, ord, x) = if let Some(x) = stat {
            if !geom.contains(x) {
                return Err(self
                    .refuse(
                        p,
                        x,
                        format!("it is outside the tenant's subnet {}", geom.subnet()),
                    )
                    .into());
            }
            if x < geom.first_host() || x > geom.last_host() {
                return Err(self
                    .refuse(
                        p,
                        x,
                        format!(
                            "it is reserved in {} (network, gateway or broadcast)",
                            geom.subnet()
                        ),
                    )
                    .into());
            }
            if p.excludes.covering(x).is_some() {
                return Err(self.refuse(p, x, "the pool excludes it".into()).into());
            }
            if self.taken.get(&p.name).is_some_and(|t| t.contains(&x)) {
                return Err(IpamError::InvalidRequest {
                    reason: format!("{} is requested twice in pool {}", to_ip(x, p.v4), p.name),
                }
                .into());
            }
            let bk = self.block_for(p, x).await?;
            let b = &self.blocks[&bk];
            let ord = b.rec.ordinal(to_ip(x, p.v4));
            if b.rec.is_used(ord) || b.pend.contains_key(&ord) {
                if !self.complete {
                    // Possibly stale: decided again from a full read.
                    return Err(PlanError::Incomplete);
                }
                let owner = match b.pend.get(&ord) {
                    Some((h, _)) => h.clone(),
                    None => self.s.owner_of(self.etcd, &net, p, to_ip(x, p.v4)).await,
                };
                return Err(IpamError::StaticTaken {
                    address: to_ip(x, p.v4),
                    pool: p.name.clone(),
                    tenant: self.tenant.to_owned(),
                    owner,
                }
                .into());
            }
            (bk, ord, x)
        } else if let Some(found) = self.sticky(p, geom).await? {
            found
        } else {
            fixed = false;
            self.dynamic(p, geom).await?
        };

        // Commit this pick into the transaction.
        let b = self.blocks.get_mut(&bk).expect("planned block");
        if self.new_blocks.contains(&bk) {
            let claim = k.claim(&net, &p.name, self.tenant, b.rec.cidr);
            self.w.absent(&claim);
            self.w.absent(&bk);
            self.w
                .put(&claim, self.s.opts.node_name.clone().into_bytes(), None);
            if self.want == ClaimState::Pending {
                self.w.put(&bk, super::encode(&b.rec), None);
            }
        } else {
            self.w.unchanged(&bk, b.rev, &b.val);
        }
        // No pending key of a two-phase reserve may hold the ordinal (it
        // is not in the block's value).
        let pend = Keys::pend(&bk, ord);
        self.w.absent(&pend);
        match self.want {
            ClaimState::Pending => {
                self.w
                    .put(&pend, self.holder.clone().into_bytes(), self.lease);
                b.pend.insert(ord, (self.holder.clone(), 0));
            }
            ClaimState::Confirmed => {
                // The bit, as confirm sets it; the block is written once
                // all requests are planned (`write_touched`).
                b.rec.set_used(ord, true);
                b.rec.released.remove(&ord);
                if !fixed {
                    b.rec.cursor = (ord + 1) % b.rec.size();
                }
                self.touched.insert(bk.clone());
            }
        }
        self.taken.entry(p.name.clone()).or_default().insert(x);
        if let Some(o) = self.owner {
            let sk = k.sticky(&net, &p.name, self.tenant, o);
            self.w
                .put(&sk, to_ip(x, p.v4).to_string().into_bytes(), None);
        }
        let block_node = b.rec.node.clone();
        let block = b.rec.cidr;
        Ok(HandleAlloc {
            allocation: Allocation {
                address: IpNet::new(to_ip(x, p.v4), geom.prefix).expect("prefix checked"),
                gateway: to_ip(geom.gateway(), geom.v4),
                subnet: geom.subnet(),
                pool: p.name.clone(),
                tenant: self.tenant.to_owned(),
            },
            block_node,
            block,
            ordinal: ord,
            fixed,
        })
    }

    /// The pool record: its geometry may not change while it is recorded,
    /// and it may not overlap another pool of the network.
    fn check_pool(&mut self, p: &ParsedPool) -> Result<(), PlanError> {
        let pk = self.s.keys.pool(&self.key.network, &p.name);
        match self.pools.get(&p.name) {
            Some((rec, rev, val)) => {
                if rec.supernet != p.supernet || rec.subnet_len != p.subnet_len {
                    return Err(IpamError::PoolConflict {
                        pool: p.name.clone(),
                        detail: format!(
                            "recorded as {} with /{} subnets, now requested as {} with /{}; \
                             release its tenants' addresses first",
                            rec.supernet, rec.subnet_len, p.supernet, p.subnet_len
                        ),
                    }
                    .into());
                }
                self.w.record_used(self.complete, &pk, *rev, val);
            }
            // A new pool is checked against every other pool: only a full
            // view is known to hold them all.
            None if !self.complete => return Err(PlanError::Incomplete),
            None => {
                for (name, (rec, _, _)) in &self.pools {
                    if rec.supernet.contains(&p.supernet) || p.supernet.contains(&rec.supernet) {
                        return Err(IpamError::PoolConflict {
                            pool: p.name.clone(),
                            detail: format!(
                                "supernet {} overlaps pool {name} ({})",
                                p.supernet, rec.supernet
                            ),
                        }
                        .into());
                    }
                }
                self.w.absent(&pk);
                let rec = PoolRec {
                    supernet: p.supernet,
                    subnet_len: p.subnet_len,
                    exclude: p.exclude_src.clone(),
                };
                let val = super::encode(&rec);
                self.w.put(&pk, val.clone(), None);
                // Rev 0: written by this transaction (later requests of the
                // same pool find it; its compare is already there).
                self.pools.insert(p.name.clone(), (rec, 0, val));
            }
        }
        Ok(())
    }

    /// The tenant's subnet in `p`: recorded, carved earlier in this call, or
    /// carved now (around the static address when there is one).
    async fn tenant_subnet(
        &mut self,
        p: &ParsedPool,
        stat: Option<u128>,
    ) -> Result<Geom, PlanError> {
        let k = self.s.keys.clone();
        let net = self.key.network.clone();
        let sk = k.subnet(&net, &p.name, self.tenant);
        if let Some((rec, rev, val)) = &self.views[&p.name].subnet {
            self.w.record_used(self.complete, &sk, *rev, val);
            return Ok(Geom::of(rec.subnet));
        }
        if let Some((g, _)) = self.carved.get(&p.name) {
            return Ok(*g);
        }
        if !self.complete {
            // Carving reads other tenants' subnets; a partial view that
            // finds no subnet (reclaimed since the hint) reads everything.
            return Err(PlanError::Incomplete);
        }
        let size = p.subnet_size();
        let base = to_u128(p.supernet.network());
        let end = to_u128(p.supernet.broadcast());
        let geom = |n: u128| Geom {
            net: n,
            last: n + (size - 1),
            v4: p.v4,
            prefix: p.subnet_len,
        };
        let overlap = self.s.opts.allow_tenant_overlap;
        // Other tenants' subnets (only when they may not overlap ours).
        let taken: BTreeSet<u128> = if overlap {
            BTreeSet::new()
        } else {
            let prefix = k.carves(&net, &p.name);
            let mut taken = BTreeSet::new();
            for kv in self.etcd.scan(&prefix, false).await? {
                let kk = String::from_utf8_lossy(kv.key()).into_owned();
                let Some(n) = kk
                    .strip_prefix(&prefix)
                    .and_then(unesc)
                    .and_then(|s| s.parse::<IpNet>().ok())
                else {
                    continue;
                };
                if kv.value() == self.tenant.as_bytes() {
                    // This tenant's own carve, made by a concurrent ADD
                    // after our view was read (which showed no subnet):
                    // counting it as taken would refuse the tenant a
                    // subnet it has (issue 13, item 2). Read again.
                    return Err(PlanError::Stale);
                }
                taken.insert(to_u128(n.network()));
            }
            taken
        };
        let g = if let Some(x) = stat {
            let n = base + (x - base) / size * size;
            if taken.contains(&n) {
                return Err(self
                    .refuse(p, x, "it lies in another tenant's subnet".into())
                    .into());
            }
            geom(n)
        } else {
            let mut cand = base;
            loop {
                let exhausted = || IpamError::SubnetsExhausted {
                    pool: p.name.clone(),
                    tenant: self.tenant.to_owned(),
                    supernet: p.supernet,
                    subnet_len: p.subnet_len,
                };
                let Some(last) = cand.checked_add(size - 1).filter(|l| *l <= end) else {
                    return Err(exhausted().into());
                };
                if !taken.contains(&cand) && !p.excludes.covers_all(cand, last) {
                    break geom(cand);
                }
                cand = last.checked_add(1).ok_or_else(exhausted)?;
            }
        };
        self.w.absent(&sk);
        let rec = SubnetRec {
            subnet: g.subnet(),
            created_ms: self.now,
        };
        let val = super::encode(&rec);
        self.w.put(&sk, val.clone(), None);
        if !overlap {
            let ck = k.carve(&net, &p.name, g.subnet());
            self.w.absent(&ck);
            self.w.put(&ck, self.tenant.as_bytes().to_vec(), None);
        }
        self.carved.insert(p.name.clone(), (g, val));
        Ok(g)
    }

    /// The block holding address `x`: loaded, read now (another node's), or
    /// claimed by this node in this transaction.
    async fn block_for(&mut self, p: &ParsedPool, x: u128) -> Result<String, PlanError> {
        let cidr = self.block_of(p, x);
        if let Some((bk, _)) = self.blocks.iter().find(|(_, b)| b.rec.cidr == cidr) {
            return Ok(bk.clone());
        }
        if !self.complete {
            return Err(PlanError::Incomplete);
        }
        let k = self.s.keys.clone();
        let net = self.key.network.clone();
        let claim = k.claim(&net, &p.name, self.tenant, cidr);
        let got = self.etcd.read(vec![(claim.clone(), false)]).await?;
        match got[0].first() {
            Some(kv) => {
                let node = String::from_utf8_lossy(kv.value()).into_owned();
                let bk = k.block(&net, &p.name, self.tenant, &node, cidr);
                let prefix = k.blocks(&net, &p.name, self.tenant);
                let found = self.etcd.scan(&bk, false).await?;
                let found = collect_blocks(&prefix, &found)?;
                let Some(b) = found.get(&bk) else {
                    return Err(IpamError::Corrupt {
                        path: claim,
                        detail: format!("block {cidr} is claimed by {node} but has no record"),
                    }
                    .into());
                };
                self.blocks.insert(bk.clone(), b.clone());
                Ok(bk)
            }
            None => Ok(self.new_block(p, cidr)),
        }
    }

    fn new_block(&mut self, p: &ParsedPool, cidr: IpNet) -> String {
        let node = self.s.opts.node_name.clone();
        let bk = self
            .s
            .keys
            .block(&self.key.network, &p.name, self.tenant, &node, cidr);
        self.blocks.insert(
            bk.clone(),
            BlockView {
                rec: BlockRec::new(&node, cidr),
                rev: 0,
                val: Vec::new(),
                pend: BTreeMap::new(),
            },
        );
        self.new_blocks.insert(bk.clone());
        if let Some(v) = self.views.get_mut(&p.name) {
            v.own.push(bk.clone());
            v.claimed.insert(cidr);
        }
        bk
    }

    /// Whether ordinal `ord` of block `bk` can be handed out.
    fn is_free(&self, p: &ParsedPool, g: Geom, b: &BlockView, ord: u32, cooling_ok: bool) -> bool {
        let x = to_u128(b.rec.cidr.network()) + u128::from(ord);
        x >= g.first_host()
            && x <= g.last_host()
            && p.excludes.covering(x).is_none()
            && !b.rec.is_used(ord)
            && !b.pend.contains_key(&ord)
            && (cooling_ok || !b.rec.is_cooling(ord, self.now, self.s.cooldown_ms()))
            && !self.taken.get(&p.name).is_some_and(|t| t.contains(&x))
    }

    /// Next-fit in one block from its cursor. After lost races, skips a
    /// random number of free ordinals so concurrent writers on one node
    /// spread out instead of colliding on the same address again.
    fn scan_block(&mut self, p: &ParsedPool, g: Geom, bk: &str) -> Option<u32> {
        let b = &self.blocks[bk];
        let size = b.rec.size();
        // A full block costs a popcount, not a scan: what keeps allocation
        // flat as a subnet fills.
        if b.rec.count_used() + b.pend.len() >= size as usize {
            return None;
        }
        let skip = if self.races == 0 {
            0
        } else {
            next_rand(&mut self.rng) % u64::from((4 * self.races).min(32))
        };
        let start = b.rec.cursor % size;
        let mut found = None;
        let mut seen = 0u64;
        for i in 0..size {
            let ord = (start + i) % size;
            if self.is_free(p, g, b, ord, false) {
                found = Some(ord);
                if seen == skip {
                    break;
                }
                seen += 1;
            }
        }
        found
    }

    /// The owner's previous address, when it is free (cooldown does not
    /// hold an address back from its own owner).
    async fn sticky(
        &mut self,
        p: &ParsedPool,
        g: Geom,
    ) -> Result<Option<(String, u32, u128)>, PlanError> {
        let Some(ip) = self.views[&p.name].sticky else {
            return Ok(None);
        };
        if ip.is_ipv4() != p.v4 || !g.contains(to_u128(ip)) {
            return Ok(None);
        }
        let x = to_u128(ip);
        let bk = self.block_for(p, x).await?;
        let b = &self.blocks[&bk];
        let ord = b.rec.ordinal(ip);
        Ok(self.is_free(p, g, b, ord, true).then_some((bk, ord, x)))
    }

    /// A dynamic address: this node's blocks first, then a new block for
    /// this node, then borrowing from other nodes' blocks.
    async fn dynamic(&mut self, p: &ParsedPool, g: Geom) -> Result<(String, u32, u128), PlanError> {
        let mut own = self.views[&p.name].own.clone();
        if self.races > 0 && self.want == ClaimState::Confirmed && own.len() > 1 {
            // A confirmed claim rewrites its block, so concurrent claims of
            // one node conflict on the block, whatever the address: after a
            // lost race, start at another of the node's blocks.
            let r = (next_rand(&mut self.rng) % own.len() as u64) as usize;
            own.rotate_left(r);
        }
        for bk in &own {
            if let Some(ord) = self.scan_block(p, g, bk) {
                let x = to_u128(self.blocks[bk].rec.cidr.network()) + u128::from(ord);
                return Ok((bk.clone(), ord, x));
            }
        }
        // Rare path: this node's blocks are full. Claim a new block: which
        // ones are claimed is in the claim keys alone (a keys-only read, one
        // short key per block), not in the blocks' values.
        self.load_claims(p).await?;
        let bl = self.block_len(p);
        let bsize = 1u128 << ((if p.v4 { 32 } else { 128 }) - u32::from(bl));
        let mut c = g.net;
        while c <= g.last {
            let cidr = IpNet::new(to_ip(c, p.v4), bl).expect("block length checked");
            let last = c + (bsize - 1);
            let lo = c.max(g.first_host());
            let hi = last.min(g.last_host());
            let claimed = self.views[&p.name].claimed.contains(&cidr)
                || self.blocks.values().any(|b| b.rec.cidr == cidr);
            if !claimed && lo <= hi && !p.excludes.covers_all(lo, hi) {
                let bk = self.new_block(p, cidr);
                if let Some(ord) = self.scan_block(p, g, &bk) {
                    let x = c + u128::from(ord);
                    return Ok((bk, ord, x));
                }
            }
            match last.checked_add(1) {
                Some(n) => c = n,
                None => break,
            }
        }
        // Rarest path: no block left to claim. Borrow from other nodes'
        // blocks (read now), starting at a node-specific place so nodes that
        // all ran out do not pile onto the same block.
        self.load_all(p).await?;
        let me = self.s.opts.node_name.clone();
        let prefix = self.s.keys.blocks(&self.key.network, &p.name, self.tenant);
        let foreign: Vec<String> = self
            .blocks
            .iter()
            .filter(|(k, b)| k.starts_with(&prefix) && b.rec.node != me)
            .map(|(k, _)| k.clone())
            .collect();
        if !foreign.is_empty() {
            let start = (node_hash(&me) % foreign.len() as u64) as usize;
            for i in 0..foreign.len() {
                let bk = &foreign[(start + i) % foreign.len()];
                if let Some(ord) = self.scan_block(p, g, bk) {
                    let x = to_u128(self.blocks[bk].rec.cidr.network()) + u128::from(ord);
                    return Ok((bk.clone(), ord, x));
                }
            }
        }
        Err(IpamError::Exhausted {
            pool: p.name.clone(),
            tenant: self.tenant.to_owned(),
            subnet: g.subnet(),
        }
        .into())
    }

    /// Which blocks of the tenant subnet are claimed (by any node).
    async fn load_claims(&mut self, p: &ParsedPool) -> Result<(), PlanError> {
        if self.views[&p.name].claims_loaded {
            return Ok(());
        }
        if !self.complete {
            // This node's hinted blocks are full: the rare path, from a
            // full view.
            return Err(PlanError::Incomplete);
        }
        let cprefix = self.s.keys.claims(&self.key.network, &p.name, self.tenant);
        let claimed = claimed_blocks(&cprefix, &self.etcd.scan(&cprefix, true).await?);
        let v = self.views.get_mut(&p.name).expect("view");
        v.claimed.extend(claimed);
        v.claims_loaded = true;
        Ok(())
    }

    /// Every block of the tenant subnet (all nodes) and the claims.
    async fn load_all(&mut self, p: &ParsedPool) -> Result<(), PlanError> {
        if self.views[&p.name].all_loaded {
            return Ok(());
        }
        if !self.complete {
            return Err(PlanError::Incomplete);
        }
        let k = self.s.keys.clone();
        let net = self.key.network.clone();
        let bprefix = k.blocks(&net, &p.name, self.tenant);
        let cprefix = k.claims(&net, &p.name, self.tenant);
        let r = self
            .etcd
            .read(vec![(bprefix.clone(), true), (cprefix.clone(), true)])
            .await?;
        for (bk, b) in collect_blocks(&bprefix, &r[0])? {
            self.blocks.entry(bk).or_insert(b);
        }
        let claimed = claimed_blocks(&cprefix, &r[1]);
        let v = self.views.get_mut(&p.name).expect("view");
        v.claimed.extend(claimed);
        v.all_loaded = true;
        v.claims_loaded = true;
        Ok(())
    }
}

/// The blocks named by claim keys under `cprefix` (`claim/<pool>/<tenant>/`).
fn claimed_blocks(cprefix: &str, kvs: &[KeyValue]) -> BTreeSet<IpNet> {
    kvs.iter()
        .filter_map(|kv| {
            let kk = String::from_utf8_lossy(kv.key()).into_owned();
            unesc(kk.strip_prefix(cprefix)?)?.parse().ok()
        })
        .collect()
}
