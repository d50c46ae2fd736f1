//! The apply engine: turns a validated plan into a connected pod, and undoes
//! it.
//!
//! # ADD
//!
//! Planning is finished before the first side effect ([`layout`] is pure).
//! Then, in order, each step registering its undo before its first side
//! effect when the undo is safe on nothing (removing a tenant network that
//! has no port, deleting guard elements keyed by this attachment's host
//! end), else as soon as it has had an effect:
//!
//! | step | does | undo |
//! |---|---|---|
//! | `record` | writes the attachment record, phase `applying` ([`record`]) | remove it |
//! | `reserve` | permanent claims ([`IpStore::claim`]) in the tenant store and, for host links, the node-local store: nothing is configured while a claim can expire | release (the record stays if it fails) |
//! | `ensure-tenant` | the tenant's network (bridge + rules, or MidoNet topology), under the tenant lock | remove it if no port is left |
//! | `veth:<if>` | each interface's veth pair | delete it |
//! | `guard:<if>` | each port's source guard: it may send only from its own MAC and addresses ([`crate::sdn::PortGuard`]) | delete the guard's elements |
//! | `attach:<if>` | each SDN port onto the tenant network (tenant lock still held) | detach |
//! | `host-side:<if>` | each host link's node side (gateway, host routes) | (goes with the veth) |
//! | `configure:<if>` | addresses, routes, sysctls inside the pod | (goes with the veth) |
//! | `ready` | the record gets the result, phase `ready` | |
//!
//! A failing step rolls back every undo in reverse and removes the record;
//! the error names the step and, if the rollback itself met errors, those
//! too. A process killed anywhere leaves a record naming everything it may
//! have created; DEL and GC undo all of it, each undo tolerating what is
//! already gone.
//!
//! # DEL, CHECK, GC, STATUS
//!
//! DEL tears down what the record names (or, with no record, what the
//! attachment key alone determines) and succeeds on partial or missing
//! state; a failure keeps the record so that the runtime's retry finishes
//! the job. CHECK compares the pod's interfaces, the tenant network, the
//! ports and the claims with the record and names the first difference. GC
//! tears down every record of the network that the runtime no longer lists
//! (except ADDs still running), then lets the stores free claims without a
//! record. STATUS asks every backend.
//!
//! Host-link addresses (Rainbond's eth1) are node-local by nature: they live
//! in the local store under the network `<network>.links`, keyed like the
//! attachment, whatever the tenant store is.

pub mod backends;
pub mod failpoint;
pub mod layout;
pub mod leftovers;
pub mod lock;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ipnet::IpNet;

use crate::cni::result::CniResult;
use crate::cni::{CniError, code};
use crate::ipam::{AttachmentKey, ClaimState, IpStore, ProcessIdentity};
use crate::netns::{Netns, VethSpec};
use crate::plan::{InterfaceKind, ValidPlan};
use crate::sdn::{PortGuard, PortSpec, Sdn, SdnError};

pub use backends::Backends;
pub use failpoint::Failpoints;
pub use layout::{Layout, resolve};
pub use leftovers::{idle_tenant_networks, leftovers};
pub use lock::{TENANT_LOCK_TIMEOUT, TenantLock};
pub use record::{Phase, Record, RecordIface, Records};

/// CNI error codes of the apply engine (140–149 of the one table in
/// [`crate::cni::codes`]; backends bring their own).
pub use crate::cni::codes;

/// A failed step, with the CNI code its cause maps to. The cause is kept
/// (`source`), and `details` carries its whole chain, so the CNI error's
/// `details` names the lowest-level reason (the kernel's errno, etcd's
/// answer) as well as tenet's context.
#[derive(Debug, Clone)]
pub struct ApplyError {
    /// The CNI error code ([`codes`]).
    pub code: u32,
    /// The step (`reserve`, `attach:eth0`, …) or operation.
    pub step: String,
    /// What went wrong: the cause and its sources, `: `-separated.
    pub details: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PartialEq for ApplyError {
    fn eq(&self, other: &Self) -> bool {
        (self.code, &self.step, &self.details) == (other.code, &other.step, &other.details)
    }
}

impl Eq for ApplyError {}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.details)
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl ApplyError {
    fn new(code: u32, step: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            step: step.into(),
            details: details.into(),
            source: None,
        }
    }

    /// A step that failed because of `cause`, whose code is `code` (the
    /// cause's own `cni_code()`, or CHECK's verdict): the cause is kept.
    fn caused<E>(code: u32, step: impl Into<String>, cause: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self {
            code,
            step: step.into(),
            details: crate::cni::error::error_chain(&cause),
            source: Some(Arc::new(cause)),
        }
    }

    /// The CNI error for a failed `command` (ADD, DEL, …).
    pub fn to_cni(&self, command: &str) -> CniError {
        CniError::new(
            self.code,
            format!("{command} failed at {}", self.step),
            self.details.clone(),
        )
    }
}

fn rec_err(step: &str) -> impl Fn(record::RecordError) -> ApplyError + '_ {
    move |e| ApplyError::caused(codes::RECORDS, step, e)
}

/// The key under which an attachment's host-link addresses live in the
/// node-local store.
pub fn link_key(key: &AttachmentKey) -> AttachmentKey {
    AttachmentKey::new(
        format!("{}.links", key.network),
        key.container_id.clone(),
        key.ifname.clone(),
    )
}

/// What ADD has done so far, newest last: undone in reverse on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    Record,
    Reserve { link: bool },
    Tenant,
    Veth { ifname: String, host_ifname: String },
    Guard { host_ifname: String },
    Attach { host_ifname: String },
}

/// The source guard of one interface: its MAC, its addresses and, when it
/// has IPv6, the link-local address tenet gives it.
fn port_guard(
    kind: InterfaceKind,
    host_ifname: &str,
    mac: crate::netns::MacAddr,
    addrs: &[IpNet],
    bridge: Option<&str>,
) -> PortGuard {
    let mut ips: Vec<std::net::IpAddr> = addrs.iter().map(IpNet::addr).collect();
    if let Some(ll) = link_local_of(mac, addrs) {
        ips.push(ll.into());
    }
    PortGuard {
        host_ifname: host_ifname.to_owned(),
        bridged: kind == InterfaceKind::SdnPort,
        mac,
        addrs: ips,
        tenant_bridge: bridge.map(str::to_owned),
    }
}

/// The link-local address of an interface with IPv6 addresses.
fn link_local_of(mac: crate::netns::MacAddr, addrs: &[IpNet]) -> Option<std::net::Ipv6Addr> {
    addrs
        .iter()
        .any(|a| a.addr().is_ipv6())
        .then(|| crate::sdn::link_local(mac))
}

/// What GC did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcSummary {
    /// Attachments torn down (their records named them).
    pub torn_down: Vec<AttachmentKey>,
    /// Attachments left alone because their ADD is still running.
    pub in_flight: Vec<AttachmentKey>,
    /// Claims the stores freed that had no record.
    pub released: Vec<AttachmentKey>,
    /// Idle tenant networks removed (their bridges).
    pub idle_tenants_removed: Vec<String>,
}

/// The engine over a set of backends.
pub struct Engine<'a> {
    store: &'a dyn IpStore,
    link_store: &'a dyn IpStore,
    sdn: &'a dyn Sdn,
    netns: &'a dyn Netns,
    records: Records,
    state_dir: PathBuf,
    failpoints: Failpoints,
    /// DEL: called once the attachment's ports are cut off (their guards
    /// removed), before the kernel deletes its interfaces (see
    /// [`Engine::with_cut_off`]).
    on_cut_off: Option<&'a (dyn Fn() + Sync)>,
    /// When the engine was made, and the nanoseconds from then to the last
    /// step's end: each journaled step's duration goes to the debug log,
    /// the in-process breakdown of an ADD (docs/perf.md).
    origin: Instant,
    last_step_ns: AtomicU64,
}

impl<'a> Engine<'a> {
    /// An engine over explicit backends (tests pass fakes), keeping its
    /// records and locks under `state_dir`.
    pub fn new(
        store: &'a dyn IpStore,
        link_store: &'a dyn IpStore,
        sdn: &'a dyn Sdn,
        netns: &'a dyn Netns,
        state_dir: &Path,
    ) -> Self {
        // The backend's failpoints are the engine's: none until set.
        sdn.set_failpoints(&Failpoints::none());
        Self {
            store,
            link_store,
            sdn,
            netns,
            records: Records::new(state_dir),
            state_dir: state_dir.to_owned(),
            failpoints: Failpoints::none(),
            on_cut_off: None,
            origin: Instant::now(),
            last_step_ns: AtomicU64::new(0),
        }
    }

    /// The same engine calling `f` during a DEL of a recorded attachment
    /// as soon as every port guard of it is removed (nothing the pod sends
    /// passes any more), before its interfaces are deleted and its
    /// addresses released. The kernel's deletion of a veth waits for RCU
    /// grace periods (15-20 ms here, most of a DEL): the node daemon answers
    /// the runtime at this point and finishes the rest after. Not called
    /// when removing a guard failed (the DEL then reports it).
    pub fn with_cut_off(mut self, f: &'a (dyn Fn() + Sync)) -> Self {
        self.on_cut_off = Some(f);
        self
    }

    /// The same engine with failpoints set (the SDN backend gets them too,
    /// for the points inside `ensure-tenant`).
    pub fn with_failpoints(mut self, f: Failpoints) -> Self {
        self.sdn.set_failpoints(&f);
        self.failpoints = f;
        self
    }

    /// The attachment records.
    pub fn records(&self) -> &Records {
        &self.records
    }

    fn point(&self, step: &str) -> Result<(), ApplyError> {
        let now = self.origin.elapsed().as_nanos() as u64;
        let last = self.last_step_ns.swap(now, Ordering::Relaxed);
        let us = now.saturating_sub(last) / 1000;
        tracing::debug!(step, us, "step done");
        crate::metrics::note(|r| {
            r.steps.push(crate::metrics::StepSample {
                name: step.to_owned(),
                us,
            })
        });
        self.failpoints
            .after(step)
            .map_err(|m| ApplyError::new(codes::INJECTED, step, m))
    }

    fn tenant_lock(&self, tenant: &str, step: &str) -> Result<TenantLock, ApplyError> {
        TenantLock::acquire(&self.state_dir, tenant, TENANT_LOCK_TIMEOUT).map_err(|e| {
            let code = match e {
                lock::LockError::Timeout { .. } => code::TRY_AGAIN_LATER,
                lock::LockError::Io { .. } => codes::RECORDS,
            };
            ApplyError::caused(code, step, e)
        })
    }

    /// ADD: applies `plan` (validated, typed) for `key` in `netns`.
    pub fn add(
        &self,
        key: &AttachmentKey,
        netns: &str,
        plan: &ValidPlan,
    ) -> Result<CniResult, ApplyError> {
        // Before any side effect: a bad CNI_NETNS (code 4) or the node's own
        // namespace (8) must not get as far as creating a tenant network.
        self.netns
            .check_pod_netns(Path::new(netns))
            .map_err(|e| ApplyError::caused(e.cni_code(), "netns", e))?;
        // Nor may the plan hand out the node's own addresses or routed
        // ranges (read-only: one address and one route dump).
        crate::plan::node::check(plan, self.netns)
            .map_err(|e| ApplyError::caused(e.cni_code(), "node-check", e))?;
        if let Some(old) = self.records.load(key).map_err(rec_err("record"))? {
            match old.phase {
                Phase::Ready => {
                    return Err(ApplyError::new(
                        codes::ALREADY_ATTACHED,
                        "record",
                        format!(
                            "attachment {key} already exists (DEL it first); its netns is {}",
                            old.netns
                        ),
                    ));
                }
                // An earlier ADD of this attachment died half-way: clear its
                // data plane, keep its claims (this ADD gets the same
                // addresses back), and start over.
                Phase::Applying => {
                    tracing::info!(%key, "clearing the leftovers of an interrupted ADD");
                    self.teardown_dataplane(&old, None, None)
                        .map_err(|e| ApplyError::new(e.code, "record", e.details))?;
                }
            }
        }
        let me = ProcessIdentity::current();
        let mut rec = Record {
            version: record::RECORD_VERSION,
            key: key.clone(),
            netns: netns.to_owned(),
            tenant: plan.tenant.clone(),
            phase: Phase::Applying,
            writer_pid: me.pid,
            writer_start: me.start_time,
            interfaces: plan
                .interfaces
                .iter()
                .map(|i| RecordIface {
                    name: i.name.clone(),
                    kind: i.kind,
                    host_ifname: crate::netns::host_ifname(&key.container_id, &i.name),
                    mac: None,
                    addrs: Vec::new(),
                    routes: Vec::new(),
                    host_gateways: Vec::new(),
                })
                .collect(),
            subnets: Vec::new(),
            bridge: None,
            annotations: plan.annotations.clone(),
            group: None,
            result: None,
        };
        let mut done = Vec::new();
        match self.add_steps(key, netns, plan, &mut rec, &mut done) {
            Ok(r) => Ok(r),
            Err(mut e) => {
                let problems = self.rollback(key, &rec, done);
                if !problems.is_empty() {
                    e.details = format!("{}; rollback: {}", e.details, problems.join("; "));
                }
                Err(e)
            }
        }
    }

    fn add_steps(
        &self,
        key: &AttachmentKey,
        netns: &str,
        plan: &ValidPlan,
        rec: &mut Record,
        done: &mut Vec<Undo>,
    ) -> Result<CniResult, ApplyError> {
        self.records.store(rec).map_err(rec_err("record"))?;
        done.push(Undo::Record);
        self.point("record")?;

        // Claims are permanent from here on (`IpStore::claim`): nothing is
        // configured in the pod while a claim could still expire, and the
        // record written above lets DEL and GC free them after a crash.
        // The undo is registered first: a claim whose answer was lost
        // (code 11) may have been made, and releasing is idempotent.
        let (treq, lreq) = layout::address_requests(plan);
        let mut claim = |store: &dyn IpStore,
                         k: &AttachmentKey,
                         tenant: &str,
                         reqs: &layout::IndexedRequests,
                         link: bool| {
            if reqs.is_empty() {
                return Ok(Vec::new());
            }
            done.push(Undo::Reserve { link });
            let reqs: Vec<_> = reqs.iter().map(|(_, r)| r.clone()).collect();
            store
                .claim(k, tenant, &reqs)
                .map_err(|e| ApplyError::caused(e.cni_code(), "reserve", e))
        };
        let tenant_allocs = claim(self.store, key, &plan.tenant, &treq, false)?;
        let link_allocs = claim(self.link_store, &link_key(key), "host-link", &lreq, true)?;
        crate::metrics::note(|r| {
            r.claimed = tenant_allocs
                .iter()
                .chain(&link_allocs)
                .map(|a| format!("{}/{}", a.pool, a.address.addr()))
                .collect()
        });
        self.point("reserve")?;

        let mut layout = resolve(plan, &key.container_id, &tenant_allocs, &link_allocs)
            .map_err(|e| ApplyError::new(code::POLICY_INVALID_PLAN, "layout", e.0))?;
        layout::limit_sdn_mtu(&mut layout, self.sdn.port_mtu())
            .map_err(|e| ApplyError::new(code::POLICY_INVALID_PLAN, "layout", e.0))?;
        rec.subnets = layout.tenant_subnets.clone();
        for (ri, li) in rec.interfaces.iter_mut().zip(&layout.interfaces) {
            ri.mac = Some(li.mac.to_string());
            ri.addrs = li.addrs.clone();
            ri.routes = li.routes.iter().map(|r| (r.dst, r.gateway)).collect();
            ri.host_gateways = li
                .host_side
                .as_ref()
                .map(|h| h.gateways.clone())
                .unwrap_or_default();
        }

        let has_ports = layout
            .interfaces
            .iter()
            .any(|i| i.kind == InterfaceKind::SdnPort);
        let netns_path = Path::new(netns);
        let mut host_macs = Vec::new();
        {
            // ensure-tenant … attach under the tenant lock (see lock.rs).
            let _lock = if has_ports {
                Some(self.tenant_lock(&plan.tenant, "ensure-tenant")?)
            } else {
                None
            };
            if has_ports {
                // Undo first: removing a tenant network with no port is safe
                // when nothing was made, and covers a half-made one.
                done.push(Undo::Tenant);
                let net = self
                    .sdn
                    .ensure_tenant(&plan.tenant, &layout.tenant_subnets)
                    .map_err(|e| match e {
                        // A point inside the step names itself.
                        crate::sdn::SdnError::Failpoint { step, msg } => {
                            ApplyError::new(codes::INJECTED, step, msg)
                        }
                        e => ApplyError::caused(e.cni_code(), "ensure-tenant", e),
                    })?;
                rec.bridge = Some(net.bridge);
                self.point("ensure-tenant")?;
            }
            // One interface group for all of this attachment's pod ends,
            // unless a link in the pod already uses it (then none: DEL goes
            // link by link). Recorded at `ready`; a record without it is
            // torn down link by link, which is always correct.
            let group = crate::netns::attachment_group(&key.container_id, &key.ifname);
            let group = match self.netns.group_in_use(netns_path, group) {
                Ok(false) => Some(group),
                Ok(true) => {
                    tracing::info!(%key, group, "interface group in use in the pod; not grouping");
                    None
                }
                Err(e) => return Err(ApplyError::caused(e.cni_code(), "veth", e)),
            };
            for i in &layout.interfaces {
                let step = format!("veth:{}", i.name);
                let info = self
                    .netns
                    .create_veth(&VethSpec {
                        container_id: key.container_id.clone(),
                        ifname: i.name.clone(),
                        host_ifname: i.host_ifname.clone(),
                        netns: netns_path.to_owned(),
                        mtu: i.mtu,
                        mac: Some(i.mac),
                        link_local: link_local_of(i.mac, &i.addrs),
                        group,
                    })
                    .map_err(|e| ApplyError::caused(e.cni_code(), &step, e))?;
                done.push(Undo::Veth {
                    ifname: i.name.clone(),
                    host_ifname: i.host_ifname.clone(),
                });
                host_macs.push(info.host_mac);
                self.point(&step)?;
            }
            rec.group = group;
            // The guards before the ports join anything: a `tn*` port
            // without its guard sends nothing, so the order fails closed.
            for i in &layout.interfaces {
                let step = format!("guard:{}", i.name);
                done.push(Undo::Guard {
                    host_ifname: i.host_ifname.clone(),
                });
                self.sdn
                    .guard_port(&port_guard(
                        i.kind,
                        &i.host_ifname,
                        i.mac,
                        &i.addrs,
                        rec.bridge.as_deref(),
                    ))
                    .map_err(|e| ApplyError::caused(e.cni_code(), &step, e))?;
                self.point(&step)?;
            }
            for i in layout
                .interfaces
                .iter()
                .filter(|i| i.kind == InterfaceKind::SdnPort)
            {
                let step = format!("attach:{}", i.name);
                self.sdn
                    .attach(
                        &plan.tenant,
                        &port_spec(
                            key,
                            i.host_ifname.clone(),
                            Some(i.mac),
                            &i.addrs,
                            &plan.annotations,
                        ),
                    )
                    .map_err(|e| ApplyError::caused(e.cni_code(), &step, e))?;
                done.push(Undo::Attach {
                    host_ifname: i.host_ifname.clone(),
                });
                self.point(&step)?;
            }
        }
        for i in &layout.interfaces {
            if let Some(hs) = &i.host_side {
                let step = format!("host-side:{}", i.name);
                self.netns
                    .host_side(hs)
                    .map_err(|e| ApplyError::caused(e.cni_code(), &step, e))?;
                self.point(&step)?;
            }
        }
        let sysctls: Vec<(String, String)> = plan
            .sysctls
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        for (n, i) in layout.interfaces.iter().enumerate() {
            let step = format!("configure:{}", i.name);
            let sys: &[(String, String)] = if n == 0 { &sysctls } else { &[] };
            self.netns
                .configure(netns_path, &i.name, &i.addrs, &i.routes, sys)
                .map_err(|e| ApplyError::caused(e.cni_code(), &step, e))?;
            self.point(&step)?;
        }
        let result = layout::result(&layout, plan, netns, &host_macs);
        rec.phase = Phase::Ready;
        rec.result = Some(result.render(crate::cni::version::LATEST));
        self.records.store(rec).map_err(rec_err("ready"))?;
        self.point("ready")?;
        Ok(result)
    }

    /// Undoes `done` in reverse; returns the problems met (and keeps going).
    /// The record stays when a release failed: a claim it names may still
    /// exist, and the record is how DEL and GC find it.
    fn rollback(&self, key: &AttachmentKey, rec: &Record, done: Vec<Undo>) -> Vec<String> {
        let mut problems = Vec::new();
        let mut claims_left = false;
        let mut note = |what: &str, r: Result<(), String>| {
            if let Err(e) = r {
                tracing::warn!(%key, what, error = %e, "rollback step failed");
                problems.push(format!("{what}: {e}"));
            }
        };
        for u in done.into_iter().rev() {
            match u {
                Undo::Attach { host_ifname } => note(
                    "detach",
                    self.sdn
                        .detach(&rec.tenant, key, &host_ifname)
                        .map_err(|e| e.to_string()),
                ),
                Undo::Guard { host_ifname } => note(
                    "unguard",
                    self.sdn
                        .unguard_port(&host_ifname)
                        .map_err(|e| e.to_string()),
                ),
                Undo::Veth {
                    ifname,
                    host_ifname,
                } => note(
                    "delete veth",
                    self.netns
                        .delete(Some(Path::new(&rec.netns)), &ifname, &host_ifname)
                        .map_err(|e| e.to_string()),
                ),
                Undo::Tenant => note(
                    "remove tenant network",
                    self.remove_tenant(&rec.tenant).map_err(|e| e.details),
                ),
                Undo::Reserve { link } => {
                    let (store, k) = if link {
                        (self.link_store, link_key(key))
                    } else {
                        (self.store, key.clone())
                    };
                    let r = store.release(&k).map(drop).map_err(|e| e.to_string());
                    claims_left |= r.is_err();
                    note("release", r);
                }
                Undo::Record if claims_left => note(
                    "record",
                    Err("kept for DEL or GC, since a claim it names may remain".into()),
                ),
                Undo::Record => note(
                    "remove record",
                    self.records.remove(key).map_err(|e| e.to_string()),
                ),
            }
        }
        problems
    }

    fn remove_tenant(&self, tenant: &str) -> Result<(), ApplyError> {
        let lock = self.tenant_lock(tenant, "remove-tenant")?;
        let removed = self
            .sdn
            .remove_tenant_if_unused(tenant)
            .map_err(|e| ApplyError::caused(e.cni_code(), "remove-tenant", e))?;
        if removed && let Err(e) = lock.remove() {
            // A lock file left behind is harmless: the next ADD reuses it.
            tracing::warn!(%tenant, error = %e, "could not remove the tenant's lock file");
        }
        Ok(())
    }

    /// Removes the veths and ports a record names, and the tenant network if
    /// it has no port left; keeps claims and the record.
    fn teardown_dataplane(
        &self,
        rec: &Record,
        netns: Option<&Path>,
        cut_off: Option<&(dyn Fn() + Sync)>,
    ) -> Result<(), ApplyError> {
        let mut errors = Vec::new();
        // Guards first, so a tenant with no port left has no guard pointing
        // at its chains.
        for i in &rec.interfaces {
            if let Err(e) = self.sdn.unguard_port(&i.host_ifname) {
                errors.push((e.cni_code(), format!("unguard {}: {e}", i.host_ifname)));
            }
        }
        if errors.is_empty()
            && let Some(f) = cut_off
        {
            f();
        }
        // All pod ends in one request when ADD grouped them: one
        // unregister batch, so DEL waits for the kernel once, not once per
        // veth. The per-link pass below then only checks the host ends.
        let mut pod_netns = netns;
        if let (Some(g), Some(ns)) = (rec.group, netns) {
            let names: Vec<&str> = rec.interfaces.iter().map(|i| i.name.as_str()).collect();
            match self.netns.delete_group(ns, g, &names) {
                Ok(true) => pod_netns = None,
                Ok(false) => {}
                Err(e) => errors.push((e.cni_code(), format!("delete interface group {g}: {e}"))),
            }
        }
        for i in rec.interfaces.iter().rev() {
            if let Err(e) = self.netns.delete(pod_netns, &i.name, &i.host_ifname) {
                errors.push((e.cni_code(), format!("delete veth {}: {e}", i.host_ifname)));
            }
        }
        let ports: Vec<_> = rec
            .interfaces
            .iter()
            .filter(|i| i.kind == InterfaceKind::SdnPort)
            .collect();
        for i in &ports {
            if let Err(e) = self.sdn.detach(&rec.tenant, &rec.key, &i.host_ifname) {
                errors.push((e.cni_code(), format!("detach {}: {e}", i.host_ifname)));
            }
        }
        // A backend that keeps idle tenant networks leaves the tenant's
        // network for its next pod (GC removes it): the DEL of a tenant's
        // last pod then costs what any other does.
        if !ports.is_empty()
            && !self.sdn.keeps_idle_tenants()
            && let Err(e) = self.remove_tenant(&rec.tenant)
        {
            errors.push((e.code, format!("remove tenant network: {}", e.details)));
        }
        match errors.first() {
            None => Ok(()),
            Some((c, _)) => Err(ApplyError::new(
                *c,
                "teardown",
                errors
                    .iter()
                    .map(|(_, m)| m.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    fn release_claims(&self, key: &AttachmentKey) -> Result<(), ApplyError> {
        for (store, k) in [(self.store, key.clone()), (self.link_store, link_key(key))] {
            store
                .release(&k)
                .map_err(|e| ApplyError::caused(e.cni_code(), "release", e))?;
        }
        Ok(())
    }

    /// DEL: removes everything of `key`. Succeeds on missing or partial
    /// state; `netns` is CNI_NETNS (`None` when empty: the pod is gone).
    pub fn del(&self, key: &AttachmentKey, netns: Option<&str>) -> Result<(), ApplyError> {
        let netns = netns.filter(|n| !n.is_empty()).map(Path::new);
        match self.records.load(key).map_err(rec_err("record"))? {
            Some(rec) => self.teardown(&rec, netns),
            None => {
                // No record: ADD never started, or DEL already ran. Still
                // clear what the key alone determines, all of it idempotent.
                let host = crate::netns::host_ifname(&key.container_id, &key.ifname);
                self.netns
                    .delete(netns, &key.ifname, &host)
                    .map_err(|e| ApplyError::caused(e.cni_code(), "delete veth", e))?;
                self.sdn
                    .unguard_port(&host)
                    .map_err(|e| ApplyError::caused(e.cni_code(), "unguard", e))?;
                self.release_claims(key)
            }
        }
    }

    fn teardown(&self, rec: &Record, netns: Option<&Path>) -> Result<(), ApplyError> {
        self.teardown_dataplane(rec, netns, self.on_cut_off)?;
        self.release_claims(&rec.key)?;
        crate::metrics::note(|r| {
            r.freed.extend(
                rec.interfaces
                    .iter()
                    .flat_map(|i| i.addrs.iter().map(|a| a.addr().to_string())),
            )
        });
        self.records.remove(&rec.key).map_err(rec_err("record"))
    }

    /// CHECK: verifies that what ADD made for `key` is still there and
    /// unchanged; `prev` is the runtime's prevResult.
    pub fn check(
        &self,
        key: &AttachmentKey,
        netns: &str,
        prev: Option<&CniResult>,
    ) -> Result<(), ApplyError> {
        let fail = |what: String| ApplyError::new(codes::CHECK_FAILED, "check", what);
        // What the SDN finds missing or different is CHECK's verdict (141);
        // a failure to look (MidoNet or etcd unreachable: 11, netlink
        // refused: 123, …) keeps its own code, so the runtime can tell "try
        // again later" from "this attachment is broken".
        let sdn_fail = |e: SdnError| {
            let code = match e {
                SdnError::Missing { .. } | SdnError::Conflict(_) => codes::CHECK_FAILED,
                ref other => other.cni_code(),
            };
            ApplyError::caused(code, "check", e)
        };
        let rec = self
            .records
            .load(key)
            .map_err(rec_err("record"))?
            .ok_or_else(|| {
                ApplyError::new(
                    code::UNKNOWN_CONTAINER,
                    "record",
                    format!("no attachment recorded for {key}"),
                )
            })?;
        if rec.phase != Phase::Ready {
            return Err(ApplyError::new(
                code::UNKNOWN_CONTAINER,
                "record",
                format!("the ADD of {key} did not complete"),
            ));
        }
        let result = rec
            .result
            .as_ref()
            .map(CniResult::parse)
            .transpose()
            .map_err(|e| ApplyError::new(codes::RECORDS, "record", e.details))?
            .unwrap_or_default();
        let ns = Path::new(netns);
        for i in &rec.interfaces {
            let state = self
                .netns
                .inspect(ns, &i.name)
                .map_err(|e| ApplyError::caused(e.cni_code(), "check", e))?
                .ok_or_else(|| fail(format!("interface {} is missing in {netns}", i.name)))?;
            if !state.up {
                return Err(fail(format!("interface {} is down", i.name)));
            }
            if let Some(mac) = &i.mac
                && state.mac.map(|m| m.to_string()).as_deref() != Some(mac.as_str())
            {
                return Err(fail(format!(
                    "interface {} has MAC {:?}, ADD set {mac}",
                    i.name,
                    state.mac.map(|m| m.to_string())
                )));
            }
            for a in &i.addrs {
                if !state.addrs.contains(a) {
                    return Err(fail(format!("address {a} is missing on {}", i.name)));
                }
            }
            for (dst, gw) in &i.routes {
                if !state
                    .routes
                    .iter()
                    .any(|s| s.dst == *dst && s.gateway == *gw)
                {
                    return Err(fail(format!(
                        "route to {dst}{} is missing on {}",
                        gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                        i.name
                    )));
                }
            }
            let host = self
                .netns
                .host_link_exists(&i.host_ifname)
                .map_err(|e| ApplyError::caused(e.cni_code(), "check", e))?;
            if !host {
                return Err(fail(format!(
                    "host end {} of {} is missing",
                    i.host_ifname, i.name
                )));
            }
            if i.kind == InterfaceKind::HostLink {
                self.check_host_side(i)?;
            }
            let mac = i
                .mac
                .as_deref()
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| fail(format!("the record has no MAC for {}", i.name)))?;
            self.sdn
                .check_guard(&port_guard(
                    i.kind,
                    &i.host_ifname,
                    mac,
                    &i.addrs,
                    rec.bridge.as_deref(),
                ))
                .map_err(sdn_fail)?;
        }
        let ports: Vec<_> = rec
            .interfaces
            .iter()
            .filter(|i| i.kind == InterfaceKind::SdnPort)
            .collect();
        if !ports.is_empty() {
            self.sdn
                .check_tenant(&rec.tenant, &rec.subnets)
                .map_err(sdn_fail)?;
            for i in ports {
                let mac = i.mac.as_deref().and_then(|m| m.parse().ok());
                self.sdn
                    .check_port(
                        &rec.tenant,
                        &port_spec(key, i.host_ifname.clone(), mac, &i.addrs, &rec.annotations),
                    )
                    .map_err(sdn_fail)?;
            }
        }
        for (store, k, kind) in [
            (self.store, key.clone(), InterfaceKind::SdnPort),
            (self.link_store, link_key(key), InterfaceKind::HostLink),
        ] {
            let want: Vec<IpNet> = rec
                .interfaces
                .iter()
                .filter(|i| i.kind == kind)
                .flat_map(|i| i.addrs.iter().copied())
                .collect();
            if want.is_empty() {
                continue;
            }
            let held: Vec<_> = store
                .list(Some(&k.network))
                .map_err(|e| ApplyError::caused(e.cni_code(), "check", e))?
                .into_iter()
                .filter(|(o, _, st)| *o == k && *st == ClaimState::Confirmed)
                .map(|(_, a, _)| a.address.addr())
                .collect();
            for a in want {
                if !held.contains(&a.addr()) {
                    return Err(fail(format!(
                        "address {} is not held by {k} in the address store",
                        a.addr()
                    )));
                }
            }
        }
        if let Some(prev) = prev {
            for ip in &result.ips {
                if !prev.ips.iter().any(|p| p.address == ip.address) {
                    return Err(fail(format!("prevResult lacks address {}", ip.address)));
                }
            }
        }
        Ok(())
    }

    /// A host link's node side: the gateway addresses on the host end and a
    /// host route to each pod address through it.
    /// A failure to look (netlink refused, …) keeps its own code; only
    /// something missing is CHECK's 141.
    fn check_host_side(&self, i: &RecordIface) -> Result<(), ApplyError> {
        let fail = |what: String| ApplyError::new(codes::CHECK_FAILED, "check", what);
        let state = self
            .netns
            .inspect_host_side(&i.host_ifname)
            .map_err(|e| ApplyError::caused(e.cni_code(), "check", e))?
            .ok_or_else(|| {
                fail(format!(
                    "host end {} of {} is missing",
                    i.host_ifname, i.name
                ))
            })?;
        for g in &i.host_gateways {
            if !state.addrs.contains(g) {
                return Err(fail(format!(
                    "gateway address {g} is missing on host end {} of {}",
                    i.host_ifname, i.name
                )));
            }
        }
        for a in &i.addrs {
            let host = IpNet::from(a.addr());
            if !state
                .routes
                .iter()
                .any(|r| r.dst == host && r.gateway.is_none())
            {
                return Err(fail(format!(
                    "node route to {host} through host end {} of {} is missing",
                    i.host_ifname, i.name
                )));
            }
        }
        Ok(())
    }

    /// GC: tears down every attachment of `network` not in `valid`
    /// ((container id, ifname) pairs), except ADDs still running, then lets
    /// the stores free unrecorded claims. Keeps going past errors; the first
    /// is returned after everything was tried.
    pub fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<GcSummary, ApplyError> {
        let is_valid = |k: &AttachmentKey| {
            valid
                .iter()
                .any(|(c, i)| *c == k.container_id && *i == k.ifname)
        };
        self.gc_where(network, valid, |rec| !is_valid(&rec.key))
    }

    /// GC of the records of `network` that `remove` picks (the node
    /// agent's: attachments whose sandbox the runtime no longer lists),
    /// except ADDs still running; then the stores free claims that no record
    /// and no `valid` attachment names. Records created while this runs are
    /// never picked unless `remove` says so.
    pub fn gc_where(
        &self,
        network: &str,
        valid: &[(String, String)],
        remove: impl Fn(&Record) -> bool,
    ) -> Result<GcSummary, ApplyError> {
        let mut out = GcSummary::default();
        let mut first_err: Option<ApplyError> = None;
        for rec in self.records.list(Some(network)).map_err(rec_err("gc"))? {
            if !remove(&rec) {
                continue;
            }
            let writer = ProcessIdentity {
                pid: rec.writer_pid,
                start_time: rec.writer_start,
            };
            if rec.phase == Phase::Applying && writer.is_alive() {
                out.in_flight.push(rec.key.clone());
                continue;
            }
            match self.teardown(&rec, None) {
                Ok(()) => out.torn_down.push(rec.key.clone()),
                Err(e) => {
                    tracing::warn!(key = %rec.key, error = %e.details, "GC could not tear down");
                    first_err.get_or_insert(e);
                }
            }
        }
        // Claims are permanent before an ADD configures anything, so the
        // stores must keep those of ADDs still running: every attachment
        // that still has a record (listed again now, after the teardowns)
        // counts as valid for them.
        let mut keep = valid.to_vec();
        for rec in self.records.list(Some(network)).map_err(rec_err("gc"))? {
            keep.push((rec.key.container_id, rec.key.ifname));
        }
        for (store, net) in [
            (self.store, network.to_owned()),
            (self.link_store, format!("{network}.links")),
        ] {
            match store.gc(&net, &keep) {
                Ok(r) => {
                    out.released.extend(r.released);
                    if let Some(e) = r.errors.first() {
                        let code = r.error_codes.first().copied();
                        let code = code.unwrap_or(codes::STORE_FAILURE);
                        first_err.get_or_insert(ApplyError::new(code, "gc", e.clone()));
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(ApplyError::caused(e.cni_code(), "gc", e));
                }
            }
        }
        // Last, the tenant networks no pod uses any more, each under its
        // tenant's lock (an ADD of that tenant between ensure and attach
        // holds it).
        match self.sdn.reap_idle_tenants() {
            Ok(removed) => out.idle_tenants_removed = removed,
            Err(e) => {
                first_err.get_or_insert(ApplyError::caused(e.cni_code(), "gc", e));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// STATUS: every backend can serve ADD (code 50 otherwise).
    pub fn status(&self) -> Result<(), ApplyError> {
        let nr = |what: &str, e: String| ApplyError::new(code::NOT_AVAILABLE, what, e);
        self.records
            .status()
            .map_err(|e| nr("records", e.to_string()))?;
        self.store
            .status()
            .map_err(|e| nr("address store", e.to_string()))?;
        self.link_store
            .status()
            .map_err(|e| nr("host-link address store", e.to_string()))?;
        self.sdn.status().map_err(|e| nr("sdn", e.to_string()))
    }
}

fn port_spec(
    key: &AttachmentKey,
    host_ifname: String,
    mac: Option<crate::netns::MacAddr>,
    addrs: &[IpNet],
    annotations: &[crate::plan::Kv],
) -> PortSpec {
    PortSpec {
        key: key.clone(),
        host_ifname,
        mac,
        addresses: addrs.to_vec(),
        annotations: annotations.to_vec(),
    }
}

#[cfg(test)]
mod tests;
