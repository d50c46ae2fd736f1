//! Where the MidoNet topology is recorded: the [`TopologyRecords`] store
//! (etcd in production, [`MemoryRecords`](super::memory::MemoryRecords) in
//! unit tests) and the typed records tenet keeps in it.
//!
//! Layout, relative to `<etcd.prefix>/midonet/` (segments are
//! percent-encoded, so tenant ids and container ids never add a `/`):
//!
//! | key | value | lifetime |
//! |---|---|---|
//! | `tenants/<tenant>` | [`TenantRecord`]: every object id of the tenant's topology, its phase | from the plan of its first pod to the removal of its topology |
//! | `claims/<tenant>` | owner token, on a lease | while one process creates, extends or removes the topology |
//! | `links/<a.b.c.d>-<len>` | tenant id | the router link network, created in the same txn as the tenant record |
//! | `ports/<tenant>/<network>/<container id>/<ifname>` | [`PortRecord`] | written before the port is created, deleted after it is gone |
//!
//! Every write is a transaction that compares revisions (or the claim's
//! owner), so two nodes never both think they own a tenant or a link
//! network (seed defects B1, B19, B21).

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::ipam::AttachmentKey;

/// One stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// Key, relative to the MidoNet root.
    pub key: String,
    /// Value.
    pub value: Vec<u8>,
    /// Revision of the last change.
    pub mod_rev: i64,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmp {
    /// The key does not exist.
    Absent(String),
    /// The key was last changed at this revision.
    ModRev(String, i64),
    /// The key holds exactly this value.
    Value(String, Vec<u8>),
    /// No key starts with this prefix.
    PrefixEmpty(String),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Sets a key, optionally attached to a lease.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
        /// Lease the key dies with.
        lease: Option<i64>,
    },
    /// Deletes a key (absent is fine).
    Delete(String),
}

/// Errors of the record store.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    /// The store did not answer in time or refused the connection.
    #[error("topology records: {0}")]
    Unavailable(String),
    /// A record does not parse.
    #[error("topology record {key}: {message}")]
    Corrupt {
        /// Key.
        key: String,
        /// Parse error.
        message: String,
    },
}

impl RecordsError {
    /// The CNI error code: 11 (try again later) when the store did not
    /// answer, 155 for a record that does not parse.
    pub fn cni_code(&self) -> u32 {
        match self {
            RecordsError::Unavailable(_) => crate::cni::codes::TRY_AGAIN_LATER,
            RecordsError::Corrupt { .. } => crate::cni::codes::TOPOLOGY_CORRUPT,
        }
    }
}

/// The key-value store the topology records live in: a handful of etcd v3
/// operations (get, prefix list, compare-and-swap transaction, leases).
pub trait TopologyRecords: Send + Sync {
    /// One key.
    fn get(&self, key: &str) -> Result<Option<Kv>, RecordsError>;
    /// Every key under `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Kv>, RecordsError>;
    /// Applies `then` if every condition in `when` holds; returns whether it did.
    fn txn(&self, when: &[Cmp], then: &[Op]) -> Result<bool, RecordsError>;
    /// A new lease of `ttl` (rounded up to whole seconds).
    fn grant(&self, ttl: Duration) -> Result<i64, RecordsError>;
    /// Renews a lease.
    fn keep_alive(&self, lease: i64) -> Result<(), RecordsError>;
    /// Ends a lease now; its keys are deleted.
    fn revoke(&self, lease: i64) -> Result<(), RecordsError>;
}

/// Where an object or a whole topology is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Planned (ids chosen) and being created; may be partly there.
    Creating,
    /// Complete.
    Ready,
    /// Being removed; may be partly gone.
    Deleting,
}

/// A tenant's topology: the ids of every object, chosen before any is
/// created, so a crashed creator's work is found and resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantRecord {
    /// Tenant id (MidoNet `tenantId`).
    pub tenant: String,
    /// Phase of the router part (chains, router, link, routes, rules).
    pub phase: Phase,
    /// Inbound filter chain of the tenant router.
    pub in_chain: Uuid,
    /// Outbound filter chain of the tenant router.
    pub out_chain: Uuid,
    /// The tenant router.
    pub router: Uuid,
    /// The link network between provider and tenant router.
    pub link: Ipv4Net,
    /// Port on the provider router (first host of `link`).
    pub provider_port: Uuid,
    /// Port on the tenant router (second host of `link`; the SNAT address).
    pub tenant_port: Uuid,
    /// Tenant router: 0.0.0.0/0 via the provider port.
    pub default_route: Uuid,
    /// Provider router: the tenant port's address /32 via the provider port.
    pub provider_route: Uuid,
    /// Out chain: accept return flows.
    pub return_rule: Uuid,
    /// Out chain: SNAT to the tenant port's address.
    pub snat_rule: Uuid,
    /// In chain: reverse SNAT.
    pub rev_snat_rule: Uuid,
    /// One bridge per tenant subnet.
    pub bridges: Vec<BridgeRecord>,
}

/// A tenant subnet's bridge and its link to the tenant router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeRecord {
    /// The subnet.
    pub subnet: Ipv4Net,
    /// Its gateway (the router port's address).
    pub gateway: Ipv4Addr,
    /// Phase of this bridge's objects.
    pub phase: Phase,
    /// The bridge.
    pub bridge: Uuid,
    /// Tenant router port holding the gateway.
    pub router_port: Uuid,
    /// Bridge port linked to it.
    pub bridge_port: Uuid,
    /// Tenant router: subnet via the router port.
    pub route: Uuid,
    /// Only in records of earlier tenet builds: a provider-router route to
    /// the subnet via the tenant's provider port. Such routes split
    /// provider-side traffic between tenants whose subnets overlap, so the
    /// tenant's next `ensure_tenant` deletes them and clears this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_route: Option<Uuid>,
}

impl TenantRecord {
    /// The link's provider-side and tenant-side addresses.
    pub fn link_addrs(&self) -> (Ipv4Addr, Ipv4Addr) {
        link_addrs(self.link)
    }

    /// The bridge whose subnet holds `addr`.
    pub fn bridge_for(&self, addr: Ipv4Addr) -> Option<&BridgeRecord> {
        self.bridges.iter().find(|b| b.subnet.contains(&addr))
    }
}

/// Provider-side and tenant-side addresses of a link network.
pub fn link_addrs(link: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let n = u32::from(link.network());
    (Ipv4Addr::from(n + 1), Ipv4Addr::from(n + 2))
}

/// One pod attachment's bridge port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRecord {
    /// Tenant.
    pub tenant: String,
    /// The attachment.
    pub key: AttachmentKey,
    /// Bridge the port is on (the bridge of the pod's subnet).
    pub bridge: Uuid,
    /// The port.
    pub port: Uuid,
    /// The MidoNet host it is bound on.
    pub host_id: Uuid,
    /// The host interface it is bound to.
    pub interface: String,
}

/// A held tenant claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Tenant.
    pub tenant: String,
    /// The owner token stored in the claim key.
    pub owner: String,
    /// The lease the claim key lives on.
    pub lease: i64,
}

/// Percent-encodes a key segment: `[A-Za-z0-9._-]` stay, the rest is `%XX`.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `tenants/<tenant>`.
pub fn tenant_key(t: &str) -> String {
    format!("tenants/{}", seg(t))
}

/// `claims/<tenant>`.
pub fn claim_key(t: &str) -> String {
    format!("claims/{}", seg(t))
}

/// `links/<net>-<len>`.
pub fn link_key(n: Ipv4Net) -> String {
    format!("links/{}-{}", n.network(), n.prefix_len())
}

/// `ports/<tenant>/` (every port of a tenant).
pub fn tenant_ports_prefix(t: &str) -> String {
    format!("ports/{}/", seg(t))
}

/// `ports/<tenant>/<network>/<container id>/<ifname>`.
pub fn port_key(t: &str, k: &AttachmentKey) -> String {
    format!(
        "{}{}/{}/{}",
        tenant_ports_prefix(t),
        seg(&k.network),
        seg(&k.container_id),
        seg(&k.ifname)
    )
}

fn parse_link_key(key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix("links/")?;
    let (a, l) = rest.rsplit_once('-')?;
    Ipv4Net::new(a.parse().ok()?, l.parse().ok()?).ok()
}

fn decode<T: DeserializeOwned>(kv: &Kv) -> Result<T, RecordsError> {
    serde_json::from_slice(&kv.value).map_err(|e| RecordsError::Corrupt {
        key: kv.key.clone(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

/// Typed access to the records.
pub struct Records {
    kv: Box<dyn TopologyRecords>,
}

impl Records {
    /// Wraps a store.
    pub fn new(kv: Box<dyn TopologyRecords>) -> Self {
        Self { kv }
    }

    /// The underlying store.
    pub fn store(&self) -> &dyn TopologyRecords {
        &*self.kv
    }

    /// The tenant's record and its revision.
    pub fn tenant(&self, t: &str) -> Result<Option<(TenantRecord, i64)>, RecordsError> {
        match self.kv.get(&tenant_key(t))? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_rev))),
            None => Ok(None),
        }
    }

    /// Every tenant record.
    pub fn tenants(&self) -> Result<Vec<TenantRecord>, RecordsError> {
        self.kv.list("tenants/")?.iter().map(decode).collect()
    }

    /// Tries to take the tenant's claim on a new lease of `ttl`; `None`
    /// when someone else holds it.
    pub fn try_claim(&self, t: &str, ttl: Duration) -> Result<Option<Claim>, RecordsError> {
        let lease = self.kv.grant(ttl)?;
        let owner = Uuid::new_v4().to_string();
        let key = claim_key(t);
        let won = self.kv.txn(
            &[Cmp::Absent(key.clone())],
            &[Op::Put {
                key,
                value: owner.clone().into_bytes(),
                lease: Some(lease),
            }],
        )?;
        if won {
            Ok(Some(Claim {
                tenant: t.to_owned(),
                owner,
                lease,
            }))
        } else {
            let _ = self.kv.revoke(lease);
            Ok(None)
        }
    }

    /// Whether anyone holds the tenant's claim.
    pub fn claimed(&self, t: &str) -> Result<bool, RecordsError> {
        Ok(self.kv.get(&claim_key(t))?.is_some())
    }

    /// Renews a claim's lease.
    pub fn refresh(&self, c: &Claim) -> Result<(), RecordsError> {
        self.kv.keep_alive(c.lease)
    }

    /// Gives a claim up (its key goes with its lease).
    pub fn release(&self, c: &Claim) -> Result<(), RecordsError> {
        self.kv.revoke(c.lease)
    }

    fn holds(c: &Claim) -> Cmp {
        Cmp::Value(claim_key(&c.tenant), c.owner.clone().into_bytes())
    }

    /// Writes the tenant record, under the claim, if it is still at `rev`
    /// (`None`: absent). With `new_link`, the link network's key is
    /// created in the same transaction (it must be free). With
    /// `require_no_ports`, only while the tenant has no port record.
    /// Returns the new revision, or `None` when a condition failed.
    pub fn put_tenant(
        &self,
        c: &Claim,
        rec: &TenantRecord,
        rev: Option<i64>,
        new_link: bool,
        require_no_ports: bool,
    ) -> Result<Option<i64>, RecordsError> {
        let key = tenant_key(&rec.tenant);
        let mut when = vec![Self::holds(c)];
        when.push(match rev {
            Some(r) => Cmp::ModRev(key.clone(), r),
            None => Cmp::Absent(key.clone()),
        });
        let mut then = vec![Op::Put {
            key: key.clone(),
            value: encode(rec),
            lease: None,
        }];
        if new_link {
            when.push(Cmp::Absent(link_key(rec.link)));
            then.push(Op::Put {
                key: link_key(rec.link),
                value: rec.tenant.clone().into_bytes(),
                lease: None,
            });
        }
        if require_no_ports {
            when.push(Cmp::PrefixEmpty(tenant_ports_prefix(&rec.tenant)));
        }
        if !self.kv.txn(&when, &then)? {
            return Ok(None);
        }
        Ok(self.kv.get(&key)?.map(|kv| kv.mod_rev))
    }

    /// Deletes the tenant record and its link key, under the claim, if the
    /// record is still at `rev`.
    pub fn delete_tenant(
        &self,
        c: &Claim,
        rec: &TenantRecord,
        rev: i64,
    ) -> Result<bool, RecordsError> {
        let key = tenant_key(&rec.tenant);
        let link = link_key(rec.link);
        // The link key is released only if it is this tenant's.
        let mine = self
            .kv
            .get(&link)?
            .is_some_and(|kv| kv.value == rec.tenant.as_bytes());
        let mut then = vec![Op::Delete(key.clone())];
        if mine {
            then.push(Op::Delete(link));
        }
        self.kv.txn(&[Self::holds(c), Cmp::ModRev(key, rev)], &then)
    }

    /// Every allocated link network and its tenant.
    pub fn links(&self) -> Result<Vec<(Ipv4Net, String)>, RecordsError> {
        Ok(self
            .kv
            .list("links/")?
            .into_iter()
            .filter_map(|kv| {
                Some((
                    parse_link_key(&kv.key)?,
                    String::from_utf8_lossy(&kv.value).into_owned(),
                ))
            })
            .collect())
    }

    /// An attachment's port record.
    pub fn port(&self, t: &str, k: &AttachmentKey) -> Result<Option<PortRecord>, RecordsError> {
        self.kv
            .get(&port_key(t, k))?
            .as_ref()
            .map(decode)
            .transpose()
    }

    /// Port records of one tenant, or all.
    pub fn ports(&self, t: Option<&str>) -> Result<Vec<PortRecord>, RecordsError> {
        let prefix = t
            .map(tenant_ports_prefix)
            .unwrap_or_else(|| "ports/".into());
        self.kv.list(&prefix)?.iter().map(decode).collect()
    }

    /// Writes a new port record while the tenant record is still at
    /// `tenant_rev` (so a removal that started meanwhile wins cleanly).
    pub fn put_port(&self, rec: &PortRecord, tenant_rev: i64) -> Result<bool, RecordsError> {
        let key = port_key(&rec.tenant, &rec.key);
        self.kv.txn(
            &[
                Cmp::ModRev(tenant_key(&rec.tenant), tenant_rev),
                Cmp::Absent(key.clone()),
            ],
            &[Op::Put {
                key,
                value: encode(rec),
                lease: None,
            }],
        )
    }

    /// Deletes a port record (absent is fine).
    pub fn delete_port(&self, t: &str, k: &AttachmentKey) -> Result<(), RecordsError> {
        self.kv.txn(&[], &[Op::Delete(port_key(t, k))]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_slash_free_and_distinct() {
        assert_eq!(seg("acme"), "acme");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_ne!(seg("a/b"), seg("a%2Fb"));
        assert_eq!(seg("%"), "%25");
        let k = AttachmentKey::new("net/1", "c1", "eth0");
        assert_eq!(port_key("t", &k), "ports/t/net%2F1/c1/eth0");
        assert!(port_key("acme", &k).starts_with(&tenant_ports_prefix("acme")));
        assert!(!port_key("acme2", &k).starts_with(&tenant_ports_prefix("acme")));
    }

    #[test]
    fn bridge_records_of_earlier_builds_still_parse() {
        // Earlier builds recorded a provider-router route per subnet.
        let old = r#"{"subnet":"10.1.0.0/24","gateway":"10.1.0.1","phase":"ready",
            "bridge":"00000000-0000-4000-8000-000000000001",
            "routerPort":"00000000-0000-4000-8000-000000000002",
            "bridgePort":"00000000-0000-4000-8000-000000000003",
            "route":"00000000-0000-4000-8000-000000000004",
            "providerRoute":"00000000-0000-4000-8000-000000000005"}"#;
        let mut b: BridgeRecord = serde_json::from_str(old).unwrap();
        assert_eq!(
            b.provider_route,
            Some("00000000-0000-4000-8000-000000000005".parse().unwrap())
        );
        // Current records have none, and do not mention it.
        b.provider_route = None;
        let now = serde_json::to_string(&b).unwrap();
        assert!(!now.contains("providerRoute"), "{now}");
        assert_eq!(serde_json::from_str::<BridgeRecord>(&now).unwrap(), b);
    }

    #[test]
    fn link_keys_round_trip() {
        let n: Ipv4Net = "172.16.0.4/30".parse().unwrap();
        assert_eq!(link_key(n), "links/172.16.0.4-30");
        assert_eq!(parse_link_key(&link_key(n)), Some(n));
        assert_eq!(
            link_addrs(n),
            ("172.16.0.5".parse().unwrap(), "172.16.0.6".parse().unwrap())
        );
    }
}
