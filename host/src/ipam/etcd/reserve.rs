//! `reserve` and `claim`, the I/O loop: read a view of etcd, plan every
//! request from it ([`super::plan`], pure), and commit the whole
//! reservation in one transaction whose compares cover everything the plan
//! used: a pending claim under the node's lease (`reserve`, two-phase) or a
//! confirmed one that never expires (`claim`, what ADD does: see "Claims"
//! in the module docs). The view comes from the node's hint file (no read
//! at all), from the failure branch of the previous attempt's transaction
//! (fresh reads that came back with the lost compare), or from one read
//! transaction. A failed compare means another writer got there first:
//! re-plan from the reads the failure returned (bounded by the deadline).
//! What the plan asks for on its rare paths ([`Fetch`]) is read here.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use etcd_client::KeyValue;
use ipnet::IpNet;

use super::conn::{Etcd, Reads, Written};
use super::hint::{HintFile, Hints};
use super::keys::{BlockKey, Keys, parse_block_key, unesc};
use super::model::{BlockRec, HandleRec, NodeLease, PoolRec, SubnetRec};
use super::plan::{
    BlockView, Fetch, Fetched, PlanCtx, PlanError, PoolSnap, View, Writes, check_request,
    holder_of, next_rand, plan,
};
use super::{EtcdStore, decode};
use crate::ipam::pool::{ParsedPool, check_same_request};
use crate::ipam::{Allocation, AttachmentKey, ClaimState, IpamError};
use crate::plan::AddressSpec;

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

/// Where the next attempt's view comes from.
enum Source {
    /// The hint file: no read at all.
    Hints,
    /// The failure branch of the last write: fresh, no extra round trip.
    Returned(Reads, ReadSet),
    /// A read transaction of everything.
    Read,
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
    requests: &[AddressSpec],
    owner: Option<&str>,
    want: ClaimState,
) -> Result<Vec<Allocation>, IpamError> {
    // Everything about the request itself is checked before any I/O.
    let parsed = check_request(key, tenant, owner, requests)?;
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

        // The claim's lease (see `claim_lease`).
        let (lease, new_lease) =
            claim_lease(s, &etcd, want, view.lease, distrust_shared, &mut granted).await?;
        let lease_id = lease.map(|l| l.id);
        if let Some((h, hrev)) = &view.handle {
            let retaken = retake(
                s,
                &etcd,
                key,
                tenant,
                requests,
                want,
                (h, *hrev),
                lease_id,
                new_lease,
                full_set(),
            )
            .await?;
            match retaken {
                Retake::Done(allocs) => return Ok(allocs),
                Retake::Again => {}
                Retake::Lost(r) => source = Source::Returned(r, full_set().clone()),
                Retake::LeaseGone => {
                    distrust_shared = true;
                    granted = None;
                }
            }
            continue;
        }
        if requests.is_empty() {
            return Ok(Vec::new());
        }

        let complete = view.complete;
        let cx = PlanCtx {
            keys: &s.keys,
            node: &s.opts.node_name,
            block_len_v4: s.opts.block_len_v4,
            block_len_v6: s.opts.block_len_v6,
            allow_tenant_overlap: s.opts.allow_tenant_overlap,
            cooldown_ms: s.cooldown_ms(),
            key,
            tenant,
            owner,
            now: s.now_ms(),
            want,
            lease: lease_id,
            publish: new_lease,
            races,
        };
        // Phase 2: the plan (pure). What it lacks, on its rare paths, is
        // read and it plans again with it.
        let mut fetched = Fetched::default();
        let planned = loop {
            match plan(&cx, &view, &fetched, &names, requests, &parsed, rng) {
                Err(PlanError::Need(f)) => {
                    fetch(s, &etcd, key, tenant, &parsed, f, &mut fetched).await?
                }
                other => break other,
            }
        };
        let (mut a, rec) = match planned {
            Ok(x) => x,
            // A partial view decides nothing but a success: anything else
            // (no room in the hinted blocks, a static address that looks
            // taken, …) is decided again from a full read.
            Err(PlanError::Incomplete) => {
                tracing::debug!(%key, attempt, "the partial view does not do; reading");
                source = Source::Read;
                continue;
            }
            Err(PlanError::Ipam(_)) if !complete => {
                tracing::debug!(%key, attempt, "the partial view does not do; reading");
                source = Source::Read;
                continue;
            }
            Err(PlanError::Ipam(e)) => return Err(e),
            Err(PlanError::Stale { pool }) => {
                stale += 1;
                if stale > 2 {
                    return Err(IpamError::Corrupt {
                        path: k.subnet(net, &pool, tenant),
                        detail: format!(
                            "tenant {tenant} has a carved subnet in pool {pool} but no \
                             subnet record"
                        ),
                    });
                }
                tracing::debug!(%key, attempt, "the view is older than a later read; reading");
                source = Source::Read;
                continue;
            }
            Err(PlanError::Need(_)) => unreachable!("fetched until the plan needs nothing"),
        };
        rng = a.rng;
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
        let (compares, ops) = std::mem::take(&mut a.w).into_txn();
        match etcd.write_or_read(compares, ops, &else_set.ops).await {
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

/// A pending claim's lease and the new node lease to publish, if any: the
/// node's current lease while it has at least half a TTL left (no grant on
/// the common path), else one granted now (`granted` keeps it for the next
/// attempts), published for the node's next ADDs in the same transaction.
/// A confirmed claim has none.
async fn claim_lease(
    s: &EtcdStore,
    etcd: &Etcd,
    want: ClaimState,
    current: Option<NodeLease>,
    distrust_shared: bool,
    granted: &mut Option<(i64, u64)>,
) -> Result<(Option<NodeLease>, Option<NodeLease>), IpamError> {
    if want != ClaimState::Pending {
        return Ok((None, None));
    }
    let ttl_ms = s.ttl_ms();
    let now = s.now_ms();
    let usable = |l: &NodeLease| l.expires_ms >= now.saturating_add(ttl_ms / 2);
    let shared = current.filter(|l| !distrust_shared && usable(l));
    Ok(match (shared, *granted) {
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
            *granted = Some((id, exp));
            let l = NodeLease {
                id,
                expires_ms: exp,
            };
            (Some(l), Some(l))
        }
    })
}

/// What retaking an existing handle came to.
enum Retake {
    /// The claim is this call's: its addresses.
    Done(Vec<Allocation>),
    /// Start the attempt over from a fresh read.
    Again,
    /// A compare was lost: plan again from the reads that came back.
    Lost(Reads),
    /// The lease is gone: grant another and try again.
    LeaseGone,
}

/// The attachment already has a handle (`h`, at revision `hrev`): a
/// retried ADD or reserve takes it over if it asks for the same addresses.
#[allow(clippy::too_many_arguments)]
async fn retake(
    s: &EtcdStore,
    etcd: &Etcd,
    key: &AttachmentKey,
    tenant: &str,
    requests: &[AddressSpec],
    want: ClaimState,
    (h, hrev): (&HandleRec, i64),
    lease_id: Option<i64>,
    new_lease: Option<NodeLease>,
    full: &ReadSet,
) -> Result<Retake, IpamError> {
    let k = &s.keys;
    let net = key.network.as_str();
    check_same_request(key, &h.tenant, &h.allocations(), tenant, requests)?;
    let hk = k.handle(key);
    match (h.state, want) {
        (ClaimState::Confirmed, ClaimState::Pending) => return Ok(Retake::Done(h.allocations())),
        (ClaimState::Confirmed, ClaimState::Confirmed) => {
            // A retried ADD (or this call's own earlier attempt,
            // whose answer was lost): the same claim. Rewritten as
            // it is, so that its revision moves: a reconciler that
            // looked at it before this ADD and releases only
            // unchanged handles (`tenetctl ipam gc`) cannot free it
            // under the pod.
            let mut w = Writes::default();
            w.unchanged(&hk, hrev, &[]);
            w.put(&hk, super::encode(h), None);
            let (compares, ops) = w.into_txn();
            return match etcd.write_or_read(compares, ops, &[]).await? {
                Written::Done(_) => Ok(Retake::Done(h.allocations())),
                Written::Lost(_) => Ok(Retake::Again),
            };
        }
        (ClaimState::Pending, ClaimState::Confirmed) => {
            // A two-phase reserve of this attachment left it
            // pending: confirm it (or, if its lease ran out
            // meanwhile, start over).
            return match s.confirm_with(etcd, key).await {
                Ok(()) => Ok(Retake::Done(h.allocations())),
                Err(IpamError::ClaimLost { .. }) => Ok(Retake::Again),
                Err(e) => Err(e),
            };
        }
        (ClaimState::Pending, ClaimState::Pending) => {}
    }
    // A retried ADD takes the pending claim over: same addresses,
    // re-leased so the new process has the whole TTL.
    let mut w = Writes::default();
    w.unchanged(&hk, hrev, &[]);
    w.put(&hk, super::encode(h), lease_id);
    for a in &h.allocations {
        let bk = k.block(net, &a.allocation.pool, tenant, &a.block_node, a.block);
        w.put(
            &Keys::pend(&bk, a.ordinal),
            holder_of(key).into_bytes(),
            lease_id,
        );
    }
    if let Some(l) = &new_lease {
        w.put(&k.node_lease(&s.opts.node_name), super::encode(l), None);
    }
    let (compares, ops) = w.into_txn();
    match etcd.write_or_read(compares, ops, &full.ops).await {
        Ok(Written::Done(_)) => Ok(Retake::Done(h.allocations())),
        Ok(Written::Lost(r)) => Ok(Retake::Lost(r)),
        Err(e) if is_lease_gone(&e) => Ok(Retake::LeaseGone),
        Err(e) => Err(e),
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let addr = &t as *const u64 as u64;
    (t ^ (u64::from(std::process::id()) << 32) ^ addr.rotate_left(17)) | 1
}

/// Reads what a plan asked for ([`Fetch`]) into `fetched`.
async fn fetch(
    s: &EtcdStore,
    etcd: &Etcd,
    key: &AttachmentKey,
    tenant: &str,
    parsed: &[ParsedPool],
    f: Fetch,
    fetched: &mut Fetched,
) -> Result<(), IpamError> {
    let k = &s.keys;
    let net = key.network.as_str();
    match f {
        Fetch::Carves { pool } => {
            let kvs = etcd.scan(&k.carves(net, &pool), false).await?;
            let carves = kvs
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.value().to_vec(),
                    )
                })
                .collect();
            fetched.carves.insert(pool, carves);
        }
        Fetch::Claim { pool, cidr } => {
            let claim = k.claim(net, &pool, tenant, cidr);
            let got = etcd.read(vec![(claim.clone(), false)]).await?;
            let found = match got[0].first() {
                Some(kv) => {
                    let node = String::from_utf8_lossy(kv.value()).into_owned();
                    let bk = k.block(net, &pool, tenant, &node, cidr);
                    let prefix = k.blocks(net, &pool, tenant);
                    let found = etcd.scan(&bk, false).await?;
                    let found = collect_blocks(&prefix, &found)?;
                    let Some(b) = found.get(&bk) else {
                        return Err(IpamError::Corrupt {
                            path: claim,
                            detail: format!("block {cidr} is claimed by {node} but has no record"),
                        });
                    };
                    Some((bk, b.clone()))
                }
                None => None,
            };
            fetched.claim.insert((pool, cidr), found);
        }
        Fetch::Claims { pool } => {
            let cprefix = k.claims(net, &pool, tenant);
            let claimed = claimed_blocks(&cprefix, &etcd.scan(&cprefix, true).await?);
            fetched.claims.insert(pool, claimed);
        }
        Fetch::All { pool } => {
            let bprefix = k.blocks(net, &pool, tenant);
            let cprefix = k.claims(net, &pool, tenant);
            let r = etcd
                .read(vec![(bprefix.clone(), true), (cprefix.clone(), true)])
                .await?;
            let blocks = collect_blocks(&bprefix, &r[0])?;
            fetched
                .all
                .insert(pool, (blocks, claimed_blocks(&cprefix, &r[1])));
        }
        Fetch::Owner { pool, ip } => {
            let owner = match parsed.iter().find(|p| p.name == pool) {
                Some(p) => s.owner_of(etcd, net, p, ip).await,
                None => "unknown".into(),
            };
            fetched.owners.insert((pool, ip), owner);
        }
    }
    Ok(())
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
