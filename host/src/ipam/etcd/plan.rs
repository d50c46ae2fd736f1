//! The allocation planner of `reserve` and `claim`, pure: from a [`View`]
//! of the keys a reserve read (pools, the tenant's subnet records, this
//! node's blocks and their pending keys, the sticky address, the node's
//! lease) it plans every requested address and returns the transaction
//! that commits them ([`Writes`]: compares on everything the plan relied
//! on, and the puts), or says why it cannot ([`PlanError`]). It does no
//! I/O: the rare paths that need more keys (carving a subnet, another
//! node's block, the claims, borrowing from other nodes, naming a static
//! address's holder) return [`PlanError::Need`], the I/O loop in
//! [`super::reserve`] reads them into [`Fetched`] and plans again. Unit-
//! tested below without etcd.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use etcd_client::{Compare, CompareOp, PutOptions, TxnOp};
use ipnet::IpNet;

use super::hint::{BlockHint, Hints, MAX_BLOCKS, TenantHint, Val};
use super::keys::{Keys, unesc};
use super::model::{BlockRec, HandleAlloc, HandleRec, NodeLease, PoolRec, SubnetRec};
use crate::ipam::pool::{Geom, ParsedPool, check_static, to_ip, to_u128};
use crate::ipam::{Allocation, AttachmentKey, ClaimState, IpamError};
use crate::plan::AddressSpec;

/// The fixed inputs of one plan: the store's settings and the request.
pub(super) struct PlanCtx<'a> {
    pub keys: &'a Keys,
    /// This node's name.
    pub node: &'a str,
    pub block_len_v4: u8,
    pub block_len_v6: u8,
    pub allow_tenant_overlap: bool,
    pub cooldown_ms: u64,
    pub key: &'a AttachmentKey,
    pub tenant: &'a str,
    /// The sticky owner, if any.
    pub owner: Option<&'a str>,
    /// The store's clock (ms since the epoch).
    pub now: u64,
    /// What the claim becomes.
    pub want: ClaimState,
    /// The lease a pending claim's keys are written under.
    pub lease: Option<i64>,
    /// A new node lease to publish in the same transaction.
    pub publish: Option<NodeLease>,
    /// Compares lost so far (spreads the next picks).
    pub races: u32,
}

/// Checks a reserve's request before any I/O: a tenant, a non-empty sticky
/// owner if any, every pool checked, and no pool given two geometries.
pub(super) fn check_request(
    key: &AttachmentKey,
    tenant: &str,
    owner: Option<&str>,
    requests: &[AddressSpec],
) -> Result<Vec<ParsedPool>, IpamError> {
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
    let mut parsed: Vec<ParsedPool> = Vec::with_capacity(requests.len());
    for r in requests {
        let p = ParsedPool::of(r)?;
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
    Ok(parsed)
}

/// The holder a pending key records: `container/ifname`.
pub(super) fn holder_of(key: &AttachmentKey) -> String {
    format!("{}/{}", key.container_id, key.ifname)
}

/// Plans `requests` (parsed as `parsed`; `names` are their distinct pools,
/// in the order the view holds them) from `view` and what was fetched:
/// the attempt (for the hints and the remembered blocks), with its
/// transaction in [`Attempt::w`], and the handle record it writes.
pub(super) fn plan<'a>(
    cx: &'a PlanCtx<'a>,
    view: &View,
    fetched: &'a Fetched,
    names: &[&str],
    requests: &[AddressSpec],
    parsed: &[ParsedPool],
    rng: u64,
) -> Result<(Attempt<'a>, HandleRec), PlanError> {
    let mut a = Attempt {
        cx,
        fetched,
        key: cx.key,
        tenant: cx.tenant,
        owner: cx.owner,
        holder: holder_of(cx.key),
        now: cx.now,
        want: cx.want,
        lease: cx.lease,
        races: cx.races,
        complete: view.complete,
        pools: view.pools.clone(),
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
    for (n, snap) in names.iter().zip(view.per_pool.iter().cloned()) {
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
    for (req, p) in requests.iter().zip(parsed) {
        allocs.push(a.plan_one(req, p)?);
    }
    let rec = HandleRec {
        container_id: cx.key.container_id.clone(),
        ifname: cx.key.ifname.clone(),
        tenant: cx.tenant.to_owned(),
        node: cx.node.to_owned(),
        state: cx.want,
        created_ms: cx.now,
        owner: cx.owner.map(str::to_owned),
        allocations: allocs,
    };
    let hk = cx.keys.handle(cx.key);
    a.w.absent(&hk);
    a.w.put(&hk, super::encode(&rec), cx.lease);
    if let Some(l) = &cx.publish {
        a.w.put(&cx.keys.node_lease(cx.node), super::encode(l), None);
    }
    // A confirmed claim's blocks, with their new bits, once each.
    a.write_touched();
    Ok((a, rec))
}

/// A block as read in this attempt, with its pending ordinals.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Compares and operations of the transaction being built. Keys are
/// compared and written at most once (etcd refuses a txn that puts one key
/// twice).
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// What must still hold, in the order the plan relied on it.
    pub compares: Vec<Cmp>,
    /// The puts, in plan order.
    pub puts: Vec<Put>,
    compared: HashSet<String>,
    written: HashSet<String>,
}

/// One compare of a planned transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cmp {
    /// The key does not exist (create revision 0).
    Absent(String),
    /// The key is still at this mod revision.
    Rev(String, i64),
    /// The key still holds this value.
    Value(String, Vec<u8>),
}

/// One put of a planned transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Put {
    pub key: String,
    pub value: Vec<u8>,
    /// The lease it is written under (a pending claim's keys).
    pub lease: Option<i64>,
}

impl Writes {
    pub(super) fn absent(&mut self, key: &str) {
        if self.compared.insert(key.to_owned()) {
            self.compares.push(Cmp::Absent(key.to_owned()));
        }
    }
    /// `key` still holds `val` as read, or, without a value, is still at
    /// `rev`. The plan depends on the record's content only, so its value
    /// is the exact guard: it cannot be fooled by a revision number reused
    /// after an etcd restore (a hint from before it), and it costs etcd one
    /// lookup where comparing both would cost two.
    pub(super) fn unchanged(&mut self, key: &str, rev: i64, val: &[u8]) {
        if self.compared.insert(key.to_owned()) {
            self.compares.push(if val.is_empty() {
                Cmp::Rev(key.to_owned(), rev)
            } else {
                Cmp::Value(key.to_owned(), val.to_vec())
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
    pub(super) fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) {
        if self.written.insert(key.to_owned()) {
            self.puts.push(Put {
                key: key.to_owned(),
                value,
                lease,
            });
        }
    }

    /// The etcd transaction: its compares and its operations.
    pub(super) fn into_txn(self) -> (Vec<Compare>, Vec<TxnOp>) {
        let compares = self
            .compares
            .into_iter()
            .map(|c| match c {
                Cmp::Absent(k) => Compare::create_revision(k, CompareOp::Equal, 0),
                Cmp::Rev(k, rev) => Compare::mod_revision(k, CompareOp::Equal, rev),
                Cmp::Value(k, v) => Compare::value(k, CompareOp::Equal, v),
            })
            .collect();
        let ops = self
            .puts
            .into_iter()
            .map(|p| {
                TxnOp::put(
                    p.key,
                    p.value,
                    p.lease.map(|l| PutOptions::new().with_lease(l)),
                )
            })
            .collect();
        (compares, ops)
    }
}

/// A record with its revision and stored value.
pub(super) type Versioned<T> = (T, i64, Vec<u8>);

/// What the view holds for one pool of the request.
pub(super) struct PoolView {
    subnet: Option<Versioned<SubnetRec>>,
    sticky: Option<IpAddr>,
    /// Keys of this node's blocks, in address order.
    pub own: Vec<String>,
    /// Whether every block of the tenant (all nodes) and the claims were read.
    all_loaded: bool,
    /// Whether the claims were read.
    claims_loaded: bool,
    claimed: BTreeSet<IpNet>,
}

/// Why planning stopped.
#[derive(Debug)]
pub(super) enum PlanError {
    /// A real answer (made from a complete view).
    Ipam(IpamError),
    /// The view is partial (hints, or the hinted blocks re-read) and the
    /// plan needs more than it holds: read everything and plan again.
    Incomplete,
    /// The view is older than something read after it (another process of
    /// this tenant carved its subnet in `pool` meanwhile): read everything
    /// again.
    Stale { pool: String },
    /// The plan needs keys the view does not hold (rare paths: carving,
    /// another node's block, the claims, every block, a static address's
    /// owner): fetch them into [`Fetched`] and plan again.
    Need(Fetch),
}

/// What a plan asks the I/O loop to read (see [`PlanError::Need`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fetch {
    /// The `carve/<pool>/` keys: which subnets other tenants hold.
    Carves { pool: String },
    /// Who claimed block `cidr` of the tenant's subnet, and that block.
    Claim { pool: String, cidr: IpNet },
    /// Every claim key of the tenant's subnet.
    Claims { pool: String },
    /// Every block (all nodes) and claim of the tenant's subnet.
    All { pool: String },
    /// The attachment that holds `ip` (for the error message).
    Owner { pool: String, ip: IpAddr },
}

/// What the I/O loop read for [`PlanError::Need`], kept for the rest of
/// one attempt: re-planning with it gives the plan the same answers the
/// reads gave.
#[derive(Debug, Default, Clone)]
pub(super) struct Fetched {
    /// Per pool: the carve keys (key, value as stored).
    pub carves: BTreeMap<String, Vec<(String, Vec<u8>)>>,
    /// Per (pool, block): its key and record when claimed, `None` when not.
    pub claim: BTreeMap<(String, IpNet), Option<(String, BlockView)>>,
    /// Per pool: the claimed blocks.
    pub claims: BTreeMap<String, BTreeSet<IpNet>>,
    /// Per pool: every block of the tenant and the claimed blocks.
    pub all: BTreeMap<String, (BTreeMap<String, BlockView>, BTreeSet<IpNet>)>,
    /// Per (pool, address): the holder, `container/ifname` or `unknown`.
    pub owners: BTreeMap<(String, IpAddr), String>,
}

impl From<IpamError> for PlanError {
    fn from(e: IpamError) -> Self {
        PlanError::Ipam(e)
    }
}

/// One attempt's view of etcd, from a read or from the hints.
#[derive(Clone)]
pub(super) struct View {
    /// `None` when it was not read (from hints: the write compares that it
    /// is absent).
    pub handle: Option<(HandleRec, i64)>,
    pub pools: BTreeMap<String, Versioned<PoolRec>>,
    /// Per pool of the request: subnet, this node's blocks, sticky address.
    pub per_pool: Vec<PoolSnap>,
    pub lease: Option<NodeLease>,
    /// Whether all of this node's blocks are in it (else only some).
    pub complete: bool,
}

impl View {
    /// Takes the pools, subnets and lease of `hinted` (what a partial
    /// failure branch does not read).
    pub(super) fn keep_hinted_records(&mut self, hinted: View) {
        self.pools = hinted.pools;
        self.lease = hinted.lease;
        for (p, h) in self.per_pool.iter_mut().zip(hinted.per_pool) {
            p.subnet = h.subnet;
        }
    }
}

/// One pool of the request in a [`View`].
#[derive(Clone)]
pub(super) struct PoolSnap {
    pub subnet: Option<Versioned<SubnetRec>>,
    pub blocks: BTreeMap<String, BlockView>,
    pub sticky: Option<IpAddr>,
}

/// One reservation attempt's state: the plan being built and what the
/// hints are rewritten from.
pub(super) struct Attempt<'a> {
    cx: &'a PlanCtx<'a>,
    fetched: &'a Fetched,
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
    pub(super) views: BTreeMap<String, PoolView>,
    pub(super) blocks: BTreeMap<String, BlockView>,
    /// Subnets carved in this attempt, by pool, with the value written.
    carved: BTreeMap<String, (Geom, Vec<u8>)>,
    /// Each planned pool's tenant subnet.
    geoms: BTreeMap<String, Geom>,
    /// Blocks claimed in this attempt.
    pub(super) new_blocks: HashSet<String>,
    /// Addresses taken earlier in this same call, by pool.
    taken: BTreeMap<String, HashSet<u128>>,
    /// Blocks a confirmed claim sets bits in (written once, at the end).
    touched: BTreeSet<String>,
    /// The values written for them, for the hints.
    written: BTreeMap<String, Vec<u8>>,
    /// The planned transaction.
    pub w: Writes,
    /// The random state after planning (the next attempt continues it).
    pub rng: u64,
}

impl Attempt<'_> {
    /// Puts every block a confirmed claim set bits in, with its final
    /// value (cooled-down releases pruned); each was compared by
    /// `plan_one` (its value as read, or absent when claimed now).
    fn write_touched(&mut self) {
        let cd = self.cx.cooldown_ms;
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
    pub(super) fn hints_after(
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
        let me = self.cx.node;
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
                .filter(|bk| self.blocks.get(*bk).is_some_and(|b| b.rec.node == me))
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
        let o = self.cx;
        let b = if p.v4 { o.block_len_v4 } else { o.block_len_v6 };
        b.max(p.subnet_len)
    }

    fn block_of(&self, p: &ParsedPool, x: u128) -> IpNet {
        IpNet::new(to_ip(x, p.v4), self.block_len(p))
            .expect("block length checked")
            .trunc()
    }

    /// Plans one address; records its compares and writes.
    pub(super) fn plan_one(
        &mut self,
        req: &AddressSpec,
        p: &ParsedPool,
    ) -> Result<HandleAlloc, PlanError> {
        let k = self.cx.keys.clone();
        let net = self.key.network.clone();
        self.check_pool(p)?;
        let stat = match &req.static_address {
            Some(sa) => Some(check_static(p, self.tenant, sa)?),
            None => None,
        };
        let geom = self.tenant_subnet(p, stat)?;
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
            let bk = self.block_for(p, x)?;
            let b = &self.blocks[&bk];
            let ord = b.rec.ordinal(to_ip(x, p.v4));
            if b.rec.is_used(ord) || b.pend.contains_key(&ord) {
                if !self.complete {
                    // Possibly stale: decided again from a full read.
                    return Err(PlanError::Incomplete);
                }
                let owner = match b.pend.get(&ord) {
                    Some((h, _)) => h.clone(),
                    None => match self.fetched.owners.get(&(p.name.clone(), to_ip(x, p.v4))) {
                        Some(o) => o.clone(),
                        None => {
                            return Err(PlanError::Need(Fetch::Owner {
                                pool: p.name.clone(),
                                ip: to_ip(x, p.v4),
                            }));
                        }
                    },
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
        } else if let Some(found) = self.sticky(p, geom)? {
            found
        } else {
            fixed = false;
            self.dynamic(p, geom)?
        };

        // Commit this pick into the transaction.
        let b = self.blocks.get_mut(&bk).expect("planned block");
        if self.new_blocks.contains(&bk) {
            let claim = k.claim(&net, &p.name, self.tenant, b.rec.cidr);
            self.w.absent(&claim);
            self.w.absent(&bk);
            self.w.put(&claim, self.cx.node.as_bytes().to_vec(), None);
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
        let pk = self.cx.keys.pool(&self.key.network, &p.name);
        match self.pools.get(&p.name) {
            Some((rec, rev, val)) => {
                p.check_geometry(rec.supernet, rec.subnet_len)?;
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
    fn tenant_subnet(&mut self, p: &ParsedPool, stat: Option<u128>) -> Result<Geom, PlanError> {
        let k = self.cx.keys.clone();
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
        let overlap = self.cx.allow_tenant_overlap;
        // Other tenants' subnets (only when they may not overlap ours).
        let taken: BTreeSet<u128> = if overlap {
            BTreeSet::new()
        } else {
            let prefix = k.carves(&net, &p.name);
            let Some(carves) = self.fetched.carves.get(&p.name) else {
                return Err(PlanError::Need(Fetch::Carves {
                    pool: p.name.clone(),
                }));
            };
            let mut taken = BTreeSet::new();
            for (kk, value) in carves {
                let Some(n) = kk
                    .strip_prefix(&prefix)
                    .and_then(unesc)
                    .and_then(|s| s.parse::<IpNet>().ok())
                else {
                    continue;
                };
                if value.as_slice() == self.tenant.as_bytes() {
                    // This tenant's own carve, made by a concurrent ADD
                    // after our view was read (which showed no subnet):
                    // counting it as taken would refuse the tenant a
                    // subnet it has (issue 13, item 2). Read again.
                    return Err(PlanError::Stale {
                        pool: p.name.clone(),
                    });
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

    /// The block holding address `x`: loaded, fetched (another node's), or
    /// claimed by this node in this transaction.
    fn block_for(&mut self, p: &ParsedPool, x: u128) -> Result<String, PlanError> {
        let cidr = self.block_of(p, x);
        if let Some((bk, _)) = self.blocks.iter().find(|(_, b)| b.rec.cidr == cidr) {
            return Ok(bk.clone());
        }
        if !self.complete {
            return Err(PlanError::Incomplete);
        }
        match self.fetched.claim.get(&(p.name.clone(), cidr)) {
            Some(Some((bk, b))) => {
                self.blocks.insert(bk.clone(), b.clone());
                Ok(bk.clone())
            }
            Some(None) => Ok(self.new_block(p, cidr)),
            None => Err(PlanError::Need(Fetch::Claim {
                pool: p.name.clone(),
                cidr,
            })),
        }
    }

    fn new_block(&mut self, p: &ParsedPool, cidr: IpNet) -> String {
        let node = self.cx.node.to_owned();
        let bk = self
            .cx
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
            && (cooling_ok || !b.rec.is_cooling(ord, self.now, self.cx.cooldown_ms))
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
    fn sticky(
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
        let bk = self.block_for(p, x)?;
        let b = &self.blocks[&bk];
        let ord = b.rec.ordinal(ip);
        Ok(self.is_free(p, g, b, ord, true).then_some((bk, ord, x)))
    }

    /// A dynamic address: this node's blocks first, then a new block for
    /// this node, then borrowing from other nodes' blocks.
    fn dynamic(&mut self, p: &ParsedPool, g: Geom) -> Result<(String, u32, u128), PlanError> {
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
        self.load_claims(p)?;
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
        self.load_all(p)?;
        let me = self.cx.node.to_owned();
        let prefix = self.cx.keys.blocks(&self.key.network, &p.name, self.tenant);
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
    fn load_claims(&mut self, p: &ParsedPool) -> Result<(), PlanError> {
        if self.views[&p.name].claims_loaded {
            return Ok(());
        }
        if !self.complete {
            // This node's hinted blocks are full: the rare path, from a
            // full view.
            return Err(PlanError::Incomplete);
        }
        let Some(claimed) = self.fetched.claims.get(&p.name).cloned() else {
            return Err(PlanError::Need(Fetch::Claims {
                pool: p.name.clone(),
            }));
        };
        let v = self.views.get_mut(&p.name).expect("view");
        v.claimed.extend(claimed);
        v.claims_loaded = true;
        Ok(())
    }

    /// Every block of the tenant subnet (all nodes) and the claims.
    fn load_all(&mut self, p: &ParsedPool) -> Result<(), PlanError> {
        if self.views[&p.name].all_loaded {
            return Ok(());
        }
        if !self.complete {
            return Err(PlanError::Incomplete);
        }
        let Some((blocks, claimed)) = self.fetched.all.get(&p.name) else {
            return Err(PlanError::Need(Fetch::All {
                pool: p.name.clone(),
            }));
        };
        for (bk, b) in blocks {
            self.blocks.entry(bk.clone()).or_insert_with(|| b.clone());
        }
        let claimed = claimed.clone();
        let v = self.views.get_mut(&p.name).expect("view");
        v.claimed.extend(claimed);
        v.all_loaded = true;
        v.claims_loaded = true;
        Ok(())
    }
}

/// xorshift64*: spreads concurrent writers over different free addresses.
pub(super) fn next_rand(x: &mut u64) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{IpFamily, PoolSpec};

    const NODE: &str = "node-a";
    const NET: &str = "net1";

    fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
        super::super::encode(v)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn req(stat: Option<&str>) -> AddressSpec {
        AddressSpec {
            family: IpFamily::Ipv4,
            pool: Some(PoolSpec {
                name: "p".into(),
                supernet: "10.0.0.0/16".parse().unwrap(),
                subnet_len: 24,
                exclude: vec![],
            }),
            static_address: stat.map(|s| crate::plan::StaticAddress::parse(s).unwrap()),
        }
    }

    fn cx<'a>(keys: &'a Keys, key: &'a AttachmentKey, want: ClaimState) -> PlanCtx<'a> {
        PlanCtx {
            keys,
            node: NODE,
            block_len_v4: 26,
            block_len_v6: 122,
            allow_tenant_overlap: false,
            cooldown_ms: 1_000,
            key,
            tenant: "t",
            owner: None,
            now: 10_000,
            want,
            lease: (want == ClaimState::Pending).then_some(7),
            publish: None,
            races: 0,
        }
    }

    fn block(node: &str, cidr: &str, used: impl IntoIterator<Item = u32>) -> BlockView {
        let mut rec = BlockRec::new(node, cidr.parse().unwrap());
        for o in used {
            rec.set_used(o, true);
        }
        let val = enc(&rec);
        BlockView {
            rec,
            rev: 8,
            val,
            pend: BTreeMap::new(),
        }
    }

    fn bkey(keys: &Keys, node: &str, cidr: &str) -> String {
        keys.block(NET, "p", "t", node, cidr.parse().unwrap())
    }

    /// A complete view: pool `p` recorded, tenant `t`'s subnet 10.0.1.0/24
    /// recorded (unless `subnet` is false), and this node's first block.
    fn view(keys: &Keys, subnet: bool, b: Option<BlockView>) -> View {
        let pool = PoolRec {
            supernet: "10.0.0.0/16".parse().unwrap(),
            subnet_len: 24,
            exclude: vec![],
        };
        let sub = SubnetRec {
            subnet: "10.0.1.0/24".parse().unwrap(),
            created_ms: 1,
        };
        let blocks = b
            .map(|b| (bkey(keys, NODE, "10.0.1.0/26"), b))
            .into_iter()
            .collect();
        View {
            handle: None,
            pools: BTreeMap::from([("p".to_owned(), (pool.clone(), 5, enc(&pool)))]),
            per_pool: vec![PoolSnap {
                subnet: subnet.then(|| (sub.clone(), 6, enc(&sub))),
                blocks,
                sticky: None,
            }],
            lease: None,
            complete: true,
        }
    }

    /// Plans `reqs`: the addresses, whether each is fixed, and the
    /// transaction.
    fn run(
        cx: &PlanCtx<'_>,
        v: &View,
        f: &Fetched,
        reqs: &[AddressSpec],
    ) -> Result<(Vec<(IpAddr, bool)>, Writes), PlanError> {
        let parsed: Vec<ParsedPool> = reqs.iter().map(|r| ParsedPool::of(r).unwrap()).collect();
        let (a, rec) = plan(cx, v, f, &["p"], reqs, &parsed, 1)?;
        let addrs = rec
            .allocations
            .iter()
            .map(|h| (h.allocation.address.addr(), h.fixed))
            .collect();
        Ok((addrs, a.w))
    }

    fn put<'w>(w: &'w Writes, key: &str) -> Option<&'w Put> {
        w.puts.iter().find(|p| p.key == key)
    }

    #[test]
    fn a_free_address_is_planned_with_compares_on_all_it_relied_on() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Pending);
        // .0 network, .1 gateway, .2 confirmed: the next free is .3.
        let b = block(NODE, "10.0.1.0/26", [2]);
        let v = view(&keys, true, Some(b.clone()));
        let (addrs, w) = run(&cx, &v, &Fetched::default(), &[req(None)]).unwrap();
        assert_eq!(addrs, vec![(ip("10.0.1.3"), false)]);
        let bk = bkey(&keys, NODE, "10.0.1.0/26");
        let pend = Keys::pend(&bk, 3);
        let hk = keys.handle(&key);
        for c in [
            Cmp::Value(bk.clone(), b.val.clone()),
            Cmp::Value(keys.pool(NET, "p"), v.pools["p"].2.clone()),
            Cmp::Absent(pend.clone()),
            Cmp::Absent(hk.clone()),
        ] {
            assert!(w.compares.contains(&c), "missing {c:?} in {:?}", w.compares);
        }
        // A pending claim: a leased pending key and handle; the block is
        // not rewritten.
        let p = put(&w, &pend).expect("pending key");
        assert_eq!((p.value.as_slice(), p.lease), (&b"c1/eth0"[..], Some(7)));
        assert_eq!(put(&w, &hk).expect("handle").lease, Some(7));
        assert!(put(&w, &bk).is_none());
    }

    #[test]
    fn a_confirmed_claim_sets_its_bit_in_the_block_it_compared() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Confirmed);
        let b = block(NODE, "10.0.1.0/26", [2]);
        let v = view(&keys, true, Some(b.clone()));
        let (addrs, w) = run(&cx, &v, &Fetched::default(), &[req(None)]).unwrap();
        assert_eq!(addrs, vec![(ip("10.0.1.3"), false)]);
        let bk = bkey(&keys, NODE, "10.0.1.0/26");
        assert!(w.compares.contains(&Cmp::Value(bk.clone(), b.val)));
        let p = put(&w, &bk).expect("block rewritten");
        let rec: BlockRec = serde_json::from_slice(&p.value).unwrap();
        assert!(rec.is_used(2) && rec.is_used(3) && !rec.is_used(4));
        assert_eq!(rec.cursor, 4);
        assert_eq!(p.lease, None);
        assert_eq!(put(&w, &keys.handle(&key)).expect("handle").lease, None);
    }

    #[test]
    fn a_static_address_is_taken_if_free_and_refused_naming_its_holder_if_not() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Pending);
        let v = view(&keys, true, Some(block(NODE, "10.0.1.0/26", [2])));
        let (addrs, _) = run(&cx, &v, &Fetched::default(), &[req(Some("10.0.1.40"))]).unwrap();
        assert_eq!(addrs, vec![(ip("10.0.1.40"), true)]);
        // Taken: the plan asks who holds it, then refuses with the name.
        let mut f = Fetched::default();
        let taken = [req(Some("10.0.1.2"))];
        match run(&cx, &v, &f, &taken) {
            Err(PlanError::Need(Fetch::Owner { pool, ip: a })) => {
                assert_eq!((pool.as_str(), a), ("p", ip("10.0.1.2")));
            }
            other => panic!("expected a need for the owner, got {other:?}"),
        }
        f.owners
            .insert(("p".into(), ip("10.0.1.2")), "c0/eth0".into());
        match run(&cx, &v, &f, &taken) {
            Err(PlanError::Ipam(IpamError::StaticTaken { owner, .. })) => {
                assert_eq!(owner, "c0/eth0");
            }
            other => panic!("expected StaticTaken, got {other:?}"),
        }
        // The gateway is never handed out.
        assert!(matches!(
            run(&cx, &v, &f, &[req(Some("10.0.1.1"))]),
            Err(PlanError::Ipam(IpamError::StaticOutOfRange { .. }))
        ));
    }

    #[test]
    fn a_cooling_address_is_skipped_until_its_cooldown_is_over() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Pending);
        for (released_at, want) in [(9_500, "10.0.1.3"), (8_000, "10.0.1.2")] {
            let mut b = block(NODE, "10.0.1.0/26", []);
            b.rec.released.insert(2, released_at);
            b.val = enc(&b.rec);
            let v = view(&keys, true, Some(b));
            let (addrs, _) = run(&cx, &v, &Fetched::default(), &[req(None)]).unwrap();
            assert_eq!(addrs, vec![(ip(want), false)], "released at {released_at}");
        }
    }

    #[test]
    fn an_exhausted_subnet_is_reported_after_reading_claims_and_every_block() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Pending);
        let cidrs = [
            "10.0.1.0/26",
            "10.0.1.64/26",
            "10.0.1.128/26",
            "10.0.1.192/26",
        ];
        let v = view(&keys, true, Some(block(NODE, cidrs[0], 0..64)));
        let mut f = Fetched::default();
        // This node's block is full: which blocks are claimed?
        assert!(matches!(
            run(&cx, &v, &f, &[req(None)]),
            Err(PlanError::Need(Fetch::Claims { .. }))
        ));
        f.claims.insert(
            "p".into(),
            cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        );
        // All claimed: borrow from the other nodes' blocks.
        assert!(matches!(
            run(&cx, &v, &f, &[req(None)]),
            Err(PlanError::Need(Fetch::All { .. }))
        ));
        let others: BTreeMap<String, BlockView> = cidrs[1..]
            .iter()
            .map(|c| (bkey(&keys, "node-b", c), block("node-b", c, 0..64)))
            .collect();
        f.all
            .insert("p".into(), (others.clone(), f.claims["p"].clone()));
        assert!(matches!(
            run(&cx, &v, &f, &[req(None)]),
            Err(PlanError::Ipam(IpamError::Exhausted { .. }))
        ));
        // One address free in another node's block: borrowed, and that
        // block's value compared.
        let mut others = others;
        let bk = bkey(&keys, "node-b", cidrs[2]);
        let b = others.get_mut(&bk).unwrap();
        b.rec.set_used(5, false);
        b.val = enc(&b.rec);
        let val = b.val.clone();
        f.all.insert("p".into(), (others, f.claims["p"].clone()));
        let (addrs, w) = run(&cx, &v, &f, &[req(None)]).unwrap();
        assert_eq!(addrs, vec![(ip("10.0.1.133"), false)]);
        assert!(w.compares.contains(&Cmp::Value(bk, val)));
    }

    #[test]
    fn a_partial_view_decides_nothing_but_a_success() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Pending);
        // Hinted (partial) view whose block is full: read everything.
        let mut v = view(&keys, true, Some(block(NODE, "10.0.1.0/26", 0..64)));
        v.complete = false;
        assert!(matches!(
            run(&cx, &v, &Fetched::default(), &[req(None)]),
            Err(PlanError::Incomplete)
        ));
        // A hint without the pool's record cannot check a new pool.
        v.pools.clear();
        assert!(matches!(
            run(&cx, &v, &Fetched::default(), &[req(None)]),
            Err(PlanError::Incomplete)
        ));
        // A hinted plan that succeeds compares its block but not the pool
        // and subnet records the block implies.
        let mut v = view(&keys, true, Some(block(NODE, "10.0.1.0/26", [])));
        v.complete = false;
        let (_, w) = run(&cx, &v, &Fetched::default(), &[req(None)]).unwrap();
        assert!(
            !w.compares
                .iter()
                .any(|c| matches!(c, Cmp::Value(k, _) if *k == keys.pool(NET, "p")))
        );
    }

    #[test]
    fn a_request_is_checked_before_any_io() {
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let mut other = req(None);
        other.pool.as_mut().unwrap().subnet_len = 25;
        for (tenant, owner, reqs) in [
            ("", None, vec![req(None)]),
            ("t", Some(""), vec![req(None)]),
            ("t", None, vec![req(None), other]),
        ] {
            assert!(matches!(
                check_request(&key, tenant, owner, &reqs),
                Err(IpamError::InvalidRequest { .. })
            ));
        }
        assert_eq!(
            check_request(&key, "t", Some("o"), &[req(None)])
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_pool_recorded_with_another_geometry_conflicts() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Pending);
        let mut v = view(&keys, true, Some(block(NODE, "10.0.1.0/26", [])));
        v.pools.get_mut("p").unwrap().0.subnet_len = 25;
        assert!(matches!(
            run(&cx, &v, &Fetched::default(), &[req(None)]),
            Err(PlanError::Ipam(IpamError::PoolConflict { .. }))
        ));
    }

    #[test]
    fn carving_skips_other_tenants_subnets_and_claims_a_block() {
        let keys = Keys::new("/tenet");
        let key = AttachmentKey::new(NET, "c1", "eth0");
        let cx = cx(&keys, &key, ClaimState::Pending);
        let v = view(&keys, false, None);
        let mut f = Fetched::default();
        assert!(matches!(
            run(&cx, &v, &f, &[req(None)]),
            Err(PlanError::Need(Fetch::Carves { .. }))
        ));
        let other = keys.carve(NET, "p", "10.0.0.0/24".parse().unwrap());
        f.carves
            .insert("p".into(), vec![(other.clone(), b"u".to_vec())]);
        assert!(matches!(
            run(&cx, &v, &f, &[req(None)]),
            Err(PlanError::Need(Fetch::Claims { .. }))
        ));
        f.claims.insert("p".into(), BTreeSet::new());
        let (addrs, w) = run(&cx, &v, &f, &[req(None)]).unwrap();
        assert_eq!(addrs, vec![(ip("10.0.1.2"), false)]);
        let sk = keys.subnet(NET, "p", "t");
        let ck = keys.carve(NET, "p", "10.0.1.0/24".parse().unwrap());
        let claim = keys.claim(NET, "p", "t", "10.0.1.0/26".parse().unwrap());
        let bk = bkey(&keys, NODE, "10.0.1.0/26");
        for k in [&sk, &ck, &claim, &bk] {
            assert!(
                w.compares.contains(&Cmp::Absent(k.clone())),
                "{k} not compared absent"
            );
            assert!(put(&w, k).is_some(), "{k} not written");
        }
        assert_eq!(put(&w, &ck).unwrap().value, b"t");
        // This tenant's own carve, made after the view was read: stale.
        f.carves.insert("p".into(), vec![(ck, b"t".to_vec())]);
        assert!(matches!(
            run(&cx, &v, &f, &[req(None)]),
            Err(PlanError::Stale { .. })
        ));
    }
}
