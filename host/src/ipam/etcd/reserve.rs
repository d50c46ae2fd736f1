//! `reserve`: read what the decision needs in one round trip, plan every
//! request, and commit the whole reservation in one transaction whose
//! compares cover everything the plan read. A failed compare means another
//! writer got there first: read again and re-plan (bounded by the deadline).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use ipnet::IpNet;

use super::conn::Etcd;
use super::keys::{BlockKey, Keys, parse_block_key, unesc};
use super::model::{BlockRec, HandleAlloc, HandleRec, PoolRec, SubnetRec};
use super::{EtcdStore, decode, now_ms};
use crate::ipam::alloc::{Geom, ParsedPool, check_same_request, parse_static, to_ip, to_u128};
use crate::ipam::{Allocation, AttachmentKey, ClaimState, IpamError};
use crate::plan::AddressRequest;

/// Most attempts one reserve makes before giving up with code 11.
const MAX_ATTEMPTS: u32 = 100;

/// `<prefix>/leases/<node>`: the lease this node's pending claims are
/// written under, shared by its ADDs while it has at least half a TTL left.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NodeLease {
    pub id: i64,
    /// When it expires at the latest (ms since the epoch, the granting
    /// node's clock: the same node reads it).
    pub expires_ms: u64,
}

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

/// etcd refused a put because its lease no longer exists.
fn is_lease_gone(e: &IpamError) -> bool {
    e.to_string().contains("lease not found")
}

/// A block as read in this attempt, with its pending ordinals.
#[derive(Debug, Clone)]
pub(super) struct BlockView {
    pub rec: BlockRec,
    /// Mod revision; 0 for a block this attempt claims.
    pub rev: i64,
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
    fn unchanged(&mut self, key: &str, rev: i64) {
        if self.compared.insert(key.to_owned()) {
            self.compares
                .push(Compare::mod_revision(key, CompareOp::Equal, rev));
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

/// What phase 1 read for one pool of the request.
struct PoolView {
    subnet: Option<(SubnetRec, i64)>,
    sticky: Option<IpAddr>,
    /// Keys of this node's blocks, in address order.
    own: Vec<String>,
    /// Whether every block of the tenant (all nodes) and the claims were read.
    all_loaded: bool,
    claimed: BTreeSet<IpNet>,
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
    lease: i64,
    attempt: u32,
    pools: BTreeMap<String, (PoolRec, i64)>,
    views: BTreeMap<String, PoolView>,
    blocks: BTreeMap<String, BlockView>,
    /// Subnets carved in this attempt, by pool.
    carved: BTreeMap<String, Geom>,
    /// Blocks claimed in this attempt.
    new_blocks: HashSet<String>,
    /// Addresses taken earlier in this same call, by pool.
    taken: BTreeMap<String, HashSet<u128>>,
    w: Writes,
    rng: u64,
}

fn holder_of(key: &AttachmentKey) -> String {
    format!("{}/{}", key.container_id, key.ifname)
}

pub(super) async fn reserve(
    s: &EtcdStore,
    etcd: Etcd,
    key: &AttachmentKey,
    tenant: &str,
    requests: &[AddressRequest],
    owner: Option<&str>,
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
    // A lease this call granted (id, expiry), and whether the node's shared
    // lease proved unusable (revoked or expired early).
    let mut granted: Option<(i64, u64)> = None;
    let mut distrust_shared = false;
    let mut rng = seed();
    for attempt in 0..MAX_ATTEMPTS {
        // Phase 1: one read.
        let mut ops = vec![(k.handle(key), false), (k.pools(net), true)];
        for n in &names {
            ops.push((k.subnet(net, n, tenant), false));
            ops.push((k.node_blocks(net, n, tenant, &s.opts.node_name), true));
            if let Some(o) = owner {
                ops.push((k.sticky(net, n, tenant, o), false));
            }
        }
        let lease_key = k.node_lease(&s.opts.node_name);
        ops.push((lease_key.clone(), false));
        let reads = etcd.read(ops).await?;

        // The claim's lease: the node's current one while it has at least
        // half a TTL left (no grant on the common path), else a new one,
        // published for the node's next ADDs in the same transaction.
        let now = now_ms();
        let usable = |l: &NodeLease| l.expires_ms >= now.saturating_add(ttl_ms / 2);
        let shared = reads
            .last()
            .and_then(|kvs| kvs.first())
            .and_then(|kv| serde_json::from_slice::<NodeLease>(kv.value()).ok())
            .filter(|l| !distrust_shared && usable(l));
        let (lease_id, publish) = match (shared, granted) {
            (Some(l), _) => (l.id, None),
            (None, Some((id, exp)))
                if usable(&NodeLease {
                    id,
                    expires_ms: exp,
                }) =>
            {
                (
                    id,
                    Some(NodeLease {
                        id,
                        expires_ms: exp,
                    }),
                )
            }
            _ => {
                let id = etcd.grant(s.opts.claim_ttl).await?;
                let exp = now.saturating_add(ttl_ms);
                granted = Some((id, exp));
                (
                    id,
                    Some(NodeLease {
                        id,
                        expires_ms: exp,
                    }),
                )
            }
        };
        let publish = |w: &mut Writes| {
            if let Some(l) = &publish {
                w.put(&lease_key, super::encode(l), None);
            }
        };

        if let Some(kv) = reads[0].first() {
            let h: HandleRec = decode(&k.handle(key), kv.value())?;
            check_same_request(key, &h.as_record(), tenant, requests)?;
            if h.state == ClaimState::Confirmed {
                return Ok(h.allocations());
            }
            // A retried ADD takes the pending claim over: same addresses,
            // re-leased so the new process has the whole TTL.
            let mut w = Writes::default();
            w.unchanged(&k.handle(key), kv.mod_revision());
            w.put(&k.handle(key), super::encode(&h), Some(lease_id));
            for a in &h.allocations {
                let bk = k.block(net, &a.allocation.pool, tenant, &a.block_node, a.block);
                w.put(
                    &Keys::pend(&bk, a.ordinal),
                    holder_of(key).into_bytes(),
                    Some(lease_id),
                );
            }
            publish(&mut w);
            match etcd.txn(Txn::new().when(w.compares).and_then(w.ops)).await {
                Ok(r) if r.succeeded() => return Ok(h.allocations()),
                Ok(_) => {}
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

        let mut a = Attempt {
            s,
            etcd: &etcd,
            key,
            tenant,
            owner,
            holder: holder_of(key),
            now: now_ms(),
            lease: lease_id,
            attempt,
            pools: BTreeMap::new(),
            views: BTreeMap::new(),
            blocks: BTreeMap::new(),
            carved: BTreeMap::new(),
            new_blocks: HashSet::new(),
            taken: BTreeMap::new(),
            w: Writes::default(),
            rng,
        };
        for kv in &reads[1] {
            let kk = String::from_utf8_lossy(kv.key()).into_owned();
            let name = kk
                .strip_prefix(&k.pools(net))
                .and_then(unesc)
                .unwrap_or_default();
            a.pools
                .insert(name, (decode(&kk, kv.value())?, kv.mod_revision()));
        }
        let per = if owner.is_some() { 3 } else { 2 };
        for (j, n) in names.iter().enumerate() {
            let base = 2 + per * j;
            let subnet = match reads[base].first() {
                Some(kv) => Some((
                    decode::<SubnetRec>(&k.subnet(net, n, tenant), kv.value())?,
                    kv.mod_revision(),
                )),
                None => None,
            };
            let prefix = k.blocks(net, n, tenant);
            let own = collect_blocks(&prefix, &reads[base + 1])?;
            let sticky = if owner.is_some() {
                reads[base + 2]
                    .first()
                    .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok())
            } else {
                None
            };
            // Address order (the keys' string order is not).
            let mut own_keys: Vec<(u128, String)> = own
                .iter()
                .map(|(k, b)| (to_u128(b.rec.cidr.network()), k.clone()))
                .collect();
            own_keys.sort();
            let own_keys: Vec<String> = own_keys.into_iter().map(|(_, k)| k).collect();
            a.blocks.extend(own);
            a.views.insert(
                n.to_string(),
                PoolView {
                    subnet,
                    sticky,
                    own: own_keys,
                    all_loaded: false,
                    claimed: BTreeSet::new(),
                },
            );
        }

        let mut allocs = Vec::with_capacity(requests.len());
        for (req, p) in requests.iter().zip(&parsed) {
            allocs.push(a.plan_one(req, p).await?);
        }
        rng = a.rng;
        let rec = HandleRec {
            container_id: key.container_id.clone(),
            ifname: key.ifname.clone(),
            tenant: tenant.to_owned(),
            node: s.opts.node_name.clone(),
            state: ClaimState::Pending,
            created_ms: a.now,
            owner: owner.map(str::to_owned),
            allocations: allocs,
        };
        let hk = k.handle(key);
        a.w.absent(&hk);
        a.w.put(&hk, super::encode(&rec), Some(lease_id));
        publish(&mut a.w);
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
        match etcd
            .txn(Txn::new().when(a.w.compares).and_then(a.w.ops))
            .await
        {
            Ok(resp) if resp.succeeded() => {
                // Remember what confirm would otherwise read again; every
                // use of it is guarded by compares on these revisions.
                if let Some(r) = resp.header().map(|h| h.revision()) {
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
                return Ok(rec.allocations());
            }
            Ok(_) => {}
            Err(e) if is_lease_gone(&e) => {
                distrust_shared = true;
                granted = None;
                continue;
            }
            Err(e) => return Err(e),
        }
        tracing::debug!(%key, attempt, "reserve lost a race; re-reading");
        if attempt >= 2 {
            let ms = 1 + next_rand(&mut rng) % u64::from(attempt.min(20) * 2);
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
    fn refuse(&self, p: &ParsedPool, x: u128, reason: String) -> IpamError {
        IpamError::StaticOutOfRange {
            address: to_ip(x, p.v4),
            pool: p.name.clone(),
            tenant: self.tenant.to_owned(),
            reason,
        }
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
    ) -> Result<HandleAlloc, IpamError> {
        let k = self.s.keys.clone();
        let net = self.key.network.clone();
        self.check_pool(p)?;
        let stat = match &req.static_address {
            Some(sa) => Some(parse_static(p, self.tenant, sa)?),
            None => None,
        };
        let geom = self.tenant_subnet(p, stat).await?;

        let mut fixed = true;
        let (bk, ord, x) = if let Some(x) = stat {
            if !geom.contains(x) {
                return Err(self.refuse(
                    p,
                    x,
                    format!("it is outside the tenant's subnet {}", geom.subnet()),
                ));
            }
            if x < geom.first_host() || x > geom.last_host() {
                return Err(self.refuse(
                    p,
                    x,
                    format!(
                        "it is reserved in {} (network, gateway or broadcast)",
                        geom.subnet()
                    ),
                ));
            }
            if p.excludes.covering(x).is_some() {
                return Err(self.refuse(p, x, "the pool excludes it".into()));
            }
            if self.taken.get(&p.name).is_some_and(|t| t.contains(&x)) {
                return Err(IpamError::InvalidRequest {
                    reason: format!("{} is requested twice in pool {}", to_ip(x, p.v4), p.name),
                });
            }
            let bk = self.block_for(p, x).await?;
            let b = &self.blocks[&bk];
            let ord = b.rec.ordinal(to_ip(x, p.v4));
            if b.rec.is_used(ord) || b.pend.contains_key(&ord) {
                let owner = match b.pend.get(&ord) {
                    Some((h, _)) => h.clone(),
                    None => self.s.owner_of(self.etcd, &net, p, to_ip(x, p.v4)).await,
                };
                return Err(IpamError::StaticTaken {
                    address: to_ip(x, p.v4),
                    pool: p.name.clone(),
                    tenant: self.tenant.to_owned(),
                    owner,
                });
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
            self.w.put(&bk, super::encode(&b.rec), None);
        } else {
            self.w.unchanged(&bk, b.rev);
        }
        let pend = Keys::pend(&bk, ord);
        self.w.absent(&pend);
        self.w
            .put(&pend, self.holder.clone().into_bytes(), Some(self.lease));
        b.pend.insert(ord, (self.holder.clone(), 0));
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
    fn check_pool(&mut self, p: &ParsedPool) -> Result<(), IpamError> {
        let pk = self.s.keys.pool(&self.key.network, &p.name);
        match self.pools.get(&p.name) {
            Some((rec, rev)) => {
                if rec.supernet != p.supernet || rec.subnet_len != p.subnet_len {
                    return Err(IpamError::PoolConflict {
                        pool: p.name.clone(),
                        detail: format!(
                            "recorded as {} with /{} subnets, now requested as {} with /{}; \
                             release its tenants' addresses first",
                            rec.supernet, rec.subnet_len, p.supernet, p.subnet_len
                        ),
                    });
                }
                self.w.unchanged(&pk, *rev);
            }
            None => {
                for (name, (rec, _)) in &self.pools {
                    if rec.supernet.contains(&p.supernet) || p.supernet.contains(&rec.supernet) {
                        return Err(IpamError::PoolConflict {
                            pool: p.name.clone(),
                            detail: format!(
                                "supernet {} overlaps pool {name} ({})",
                                p.supernet, rec.supernet
                            ),
                        });
                    }
                }
                self.w.absent(&pk);
                let rec = PoolRec {
                    supernet: p.supernet,
                    subnet_len: p.subnet_len,
                    exclude: p.exclude_src.clone(),
                };
                self.w.put(&pk, super::encode(&rec), None);
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
    ) -> Result<Geom, IpamError> {
        let k = self.s.keys.clone();
        let net = self.key.network.clone();
        let sk = k.subnet(&net, &p.name, self.tenant);
        if let Some((rec, rev)) = &self.views[&p.name].subnet {
            self.w.unchanged(&sk, *rev);
            return Ok(Geom::of(rec.subnet));
        }
        if let Some(g) = self.carved.get(&p.name) {
            return Ok(*g);
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
            self.etcd
                .scan(&prefix, true)
                .await?
                .iter()
                .filter_map(|kv| {
                    let kk = String::from_utf8_lossy(kv.key()).into_owned();
                    let s = unesc(kk.strip_prefix(&prefix)?)?;
                    s.parse::<IpNet>().ok().map(|n| to_u128(n.network()))
                })
                .collect()
        };
        let g = if let Some(x) = stat {
            let n = base + (x - base) / size * size;
            if taken.contains(&n) {
                return Err(self.refuse(p, x, "it lies in another tenant's subnet".into()));
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
                    return Err(exhausted());
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
        self.w.put(&sk, super::encode(&rec), None);
        if !overlap {
            let ck = k.carve(&net, &p.name, g.subnet());
            self.w.absent(&ck);
            self.w.put(&ck, self.tenant.as_bytes().to_vec(), None);
        }
        self.carved.insert(p.name.clone(), g);
        Ok(g)
    }

    /// The block holding address `x`: loaded, read now (another node's), or
    /// claimed by this node in this transaction.
    async fn block_for(&mut self, p: &ParsedPool, x: u128) -> Result<String, IpamError> {
        let cidr = self.block_of(p, x);
        if let Some((bk, _)) = self.blocks.iter().find(|(_, b)| b.rec.cidr == cidr) {
            return Ok(bk.clone());
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
                    });
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
        let skip = if self.attempt == 0 {
            0
        } else {
            next_rand(&mut self.rng) % u64::from((4 * self.attempt).min(32))
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
    ) -> Result<Option<(String, u32, u128)>, IpamError> {
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
    async fn dynamic(&mut self, p: &ParsedPool, g: Geom) -> Result<(String, u32, u128), IpamError> {
        let own = self.views[&p.name].own.clone();
        for bk in &own {
            if let Some(ord) = self.scan_block(p, g, bk) {
                let x = to_u128(self.blocks[bk].rec.cidr.network()) + u128::from(ord);
                return Ok((bk.clone(), ord, x));
            }
        }
        // Rare path: this node's blocks are full. Read every block and claim
        // of the tenant subnet.
        self.load_all(p).await?;
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
        // Borrow: other nodes' blocks, starting at a node-specific place so
        // nodes that all ran out do not pile onto the same block.
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
        })
    }

    async fn load_all(&mut self, p: &ParsedPool) -> Result<(), IpamError> {
        if self.views[&p.name].all_loaded {
            return Ok(());
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
        let claimed: BTreeSet<IpNet> = r[1]
            .iter()
            .filter_map(|kv| {
                let kk = String::from_utf8_lossy(kv.key()).into_owned();
                unesc(kk.strip_prefix(&cprefix)?)?.parse().ok()
            })
            .collect();
        let v = self.views.get_mut(&p.name).expect("view");
        v.claimed.extend(claimed);
        v.all_loaded = true;
        Ok(())
    }
}
