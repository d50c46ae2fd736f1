//! Address stores: where a pod's addresses come from and who owns them.
//!
//! [`IpStore`] is the one trait every address backend implements: the
//! embedded default [`LocalStore`] (files under a state directory, one
//! machine), the cluster store [`EtcdStore`] and the recording
//! [`FakeIpStore`] for unit tests of the apply engine.
//!
//! # Model
//!
//! - A **pool** ([`Pool`](crate::plan::Pool)) is a supernet that per-tenant
//!   subnets of `subnet_len` are carved from, first free, without overlap.
//!   The carving is recorded per (network, pool, tenant) and reused until the
//!   tenant's last address in that pool has been released for one cooldown.
//! - In a tenant subnet the network address, the gateway (first host) and,
//!   for IPv4, the broadcast address are never handed out, nor are the
//!   pool's `exclude` ranges.
//! - Every record is owned by an [`AttachmentKey`] — (network, container id,
//!   ifname), all chosen by the runtime, never by a tenant.
//! - Claims are two-phase: [`IpStore::reserve`] records a **pending** claim
//!   (all requested addresses or none), [`IpStore::confirm`] makes it
//!   permanent. A pending claim whose process crashed or overran its
//!   deadline is reclaimed by [`IpStore::gc`] and by the next `reserve`
//!   that runs out of space (in etcd, by its lease's expiry); a retried
//!   reserve (same key) gets its claim back. ADD uses [`IpStore::claim`],
//!   both phases at once, **before** it configures anything in the pod: an
//!   address that a pod may carry is never pending, so it cannot expire
//!   while the pod holds it; the attachment record, written before the
//!   claim, is what lets DEL and GC free the claim of a killed ADD.
//! - [`IpStore::release`] (DEL) and [`IpStore::gc`] are idempotent: missing
//!   records are success. Released addresses cool down before reuse
//!   (calico#6968: immediate reuse breaks short-lived pods' peers).
//!
//! # Error codes
//!
//! [`IpamError::cni_code`] maps every error to a CNI error code; the plugin
//! codes are the constants in [`codes`], defined there and nowhere else.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `mod.rs` (here) | the [`IpStore`] trait, [`Allocation`], [`AttachmentKey`], [`IpamError`] |
//! | `pool.rs` | pool geometry both stores share, stateless: a pool parsed from a request, a tenant subnet's layout, static addresses, the retry check |
//! | `alloc.rs` | the local allocator: one network's state in memory (records, carved subnets, next-fit over used ranges), no I/O |
//! | `local.rs` | [`LocalStore`]: `alloc` loaded and saved under a file lock |
//! | `etcd/` | [`EtcdStore`]: the cluster store. `keys.rs` the key layout, `model.rs` the records, `hint.rs` the node's hint file, `plan.rs` the allocation planner (pure: a view of the keys read in, the transaction out), `reserve.rs` the reserve/claim I/O loop around it, `conn.rs` the connection |
//! | `fake.rs` | [`FakeIpStore`]: `alloc` in a mutex, for the apply engine's unit tests |
//! | `clock.rs` | the stores' wall clock |

#![deny(missing_docs)]

mod alloc;
mod boot;
pub mod clock;
pub mod etcd;
pub mod fake;
pub mod local;
mod pool;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::plan::AddressSpec;

pub use clock::{Clock, ManualClock, SystemClock};
pub use etcd::{EtcdOptions, EtcdStore};
pub use fake::{FakeIpStore, IpStoreCall};
pub use local::{LocalOptions, LocalStore, ProcessIdentity};

/// The owner of an address record: one interface of one container on one
/// network, exactly as the runtime names it (CNI_CONTAINERID, CNI_IFNAME).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentKey {
    /// Network name from the CNI configuration.
    pub network: String,
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME.
    pub ifname: String,
}

impl AttachmentKey {
    /// Builds a key from anything string-like.
    pub fn new(
        network: impl Into<String>,
        container_id: impl Into<String>,
        ifname: impl Into<String>,
    ) -> Self {
        Self {
            network: network.into(),
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// Checks the parts a store relies on: a valid network name (see
    /// [`validate_network_name`]) and non-empty container id and ifname.
    pub fn validate(&self) -> Result<(), IpamError> {
        validate_network_name(&self.network)?;
        if self.container_id.is_empty() || self.ifname.is_empty() {
            return Err(IpamError::InvalidRequest {
                reason: format!("attachment {self} needs a container id and an ifname"),
            });
        }
        Ok(())
    }
}

impl fmt::Display for AttachmentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.network, self.container_id, self.ifname)
    }
}

/// One address handed to an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The address, with the tenant subnet's prefix length.
    pub address: IpNet,
    /// The tenant subnet's gateway (its first host address).
    pub gateway: IpAddr,
    /// The tenant subnet.
    pub subnet: IpNet,
    /// Pool the subnet was carved from.
    pub pool: String,
    /// Tenant the subnet belongs to.
    pub tenant: String,
}

/// Phase of an attachment's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimState {
    /// Reserved by an ADD that has not confirmed yet.
    Pending,
    /// The ADD that reserved it succeeded.
    Confirmed,
}

/// A tenant's subnet in one pool, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSubnet {
    /// Network the pool belongs to.
    pub network: String,
    /// Pool name.
    pub pool: String,
    /// Tenant.
    pub tenant: String,
    /// The carved subnet.
    pub subnet: IpNet,
    /// Its gateway.
    pub gateway: IpAddr,
    /// Addresses currently allocated in it.
    pub allocated: usize,
    /// When it became empty (ms since the epoch); it returns to the pool one
    /// cooldown later unless the tenant allocates again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since_ms: Option<u64>,
}

/// What a [`IpStore::gc`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Attachments whose addresses were freed.
    pub released: Vec<AttachmentKey>,
    /// Attachments not in the valid list but kept because their ADD is still
    /// running (a live pending claim): the runtime does not list them yet.
    pub kept_in_flight: Vec<AttachmentKey>,
    /// Errors met on the way; GC carries on past them.
    pub errors: Vec<String>,
    /// The CNI code of each of `errors`, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error_codes: Vec<u32>,
}

/// The address store backend.
///
/// Synchronous and shareable: the CNI binary makes a handful of calls per
/// invocation, and an async store could be wrapped at the edge. Every method
/// takes `&self`; implementations serialise internally (flock, etcd
/// transactions, a mutex).
pub trait IpStore: Send + Sync {
    /// Reserves one address per request for `key`, all or nothing, as a
    /// pending claim. Each request's pool must be set; the tenant's subnet in
    /// it is carved on first use. A `static_address` is honoured exactly or
    /// the call fails ([`IpamError::StaticTaken`] when another owner holds
    /// it, [`IpamError::StaticOutOfRange`] when it is outside the tenant's
    /// subnet or pool, reserved or excluded).
    ///
    /// Idempotent: if `key` already holds a matching reservation (a retried
    /// ADD) it is returned unchanged, pending or confirmed; a mismatching one
    /// is [`IpamError::AttachmentConflict`].
    fn reserve(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
    ) -> Result<Vec<Allocation>, IpamError>;

    /// [`IpStore::reserve`] for a stable `owner` (a StatefulSet pod's
    /// `namespace/name`, a VM name): a store that supports sticky addresses
    /// hands the owner the address it held last in each pool when that is
    /// free (even while it cools down), and records the new one otherwise.
    /// Stores without sticky addresses (the default) ignore the owner.
    fn reserve_for_owner(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
        owner: Option<&str>,
    ) -> Result<Vec<Allocation>, IpamError> {
        let _ = owner;
        self.reserve(key, tenant, requests)
    }

    /// Confirms `key`'s claim. Confirming twice is fine; a claim that is
    /// gone (reclaimed as stale) is [`IpamError::ClaimLost`], and the caller
    /// must fail rather than use it.
    fn confirm(&self, key: &AttachmentKey) -> Result<(), IpamError>;

    /// Reserves and confirms at once: when this returns, the claim is
    /// permanent (it never expires nor is reclaimed as stale) until
    /// [`IpStore::release`]. What ADD does before anything is configured
    /// in the pod: an address a pod carries must never be handed out again
    /// because the ADD that configured it was killed (issue 13, item 3).
    /// Crash safety comes from the caller's record, written before this
    /// call, which names the attachment for DEL and GC.
    ///
    /// Idempotent like `reserve`. The default is `reserve` then `confirm`;
    /// a store that can do both in one step (etcd: one transaction)
    /// overrides it. On an error the claim may still have been made (an
    /// answer lost on the way, code 11): release it.
    fn claim(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
    ) -> Result<Vec<Allocation>, IpamError> {
        let out = self.reserve(key, tenant, requests)?;
        self.confirm(key)?;
        Ok(out)
    }

    /// Frees `key`'s addresses (DEL, or ADD rolling back) and returns them.
    /// A missing record is success with nothing returned.
    fn release(&self, key: &AttachmentKey) -> Result<Vec<Allocation>, IpamError>;

    /// CNI GC: frees every attachment of `network` whose (container id,
    /// ifname) is not in `valid`, except claims whose ADD is still running.
    /// Keeps going past errors and reports them.
    fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<GcReport, IpamError>;

    /// Every allocation, of one network or all, with its owner and phase.
    fn list(
        &self,
        network: Option<&str>,
    ) -> Result<Vec<(AttachmentKey, Allocation, ClaimState)>, IpamError>;

    /// Every carved tenant subnet, of one network or all.
    fn tenant_subnets(&self, network: Option<&str>) -> Result<Vec<TenantSubnet>, IpamError>;

    /// CNI STATUS: the store is usable (for the local store: the state
    /// directory is writable and every network's state parses; for etcd:
    /// a quorum answers, and members that do not are logged as warnings).
    fn status(&self) -> Result<(), IpamError>;
}

/// CNI error codes of the address stores (`cni_code`): 11, 50, and 130–138
/// of the one table in [`crate::cni::codes`].
pub use crate::cni::codes;

/// Errors of the address stores. Messages name the pool, tenant, address
/// and owner involved; [`IpamError::cni_code`] gives the CNI code.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// No free address in the tenant's subnet.
    #[error("pool {pool}: no free address left in tenant {tenant}'s subnet {subnet}")]
    Exhausted {
        /// Pool.
        pool: String,
        /// Tenant.
        tenant: String,
        /// The tenant's subnet.
        subnet: IpNet,
    },
    /// No free subnet left in the pool for the tenant.
    #[error("pool {pool}: no free /{subnet_len} subnet left in {supernet} for tenant {tenant}")]
    SubnetsExhausted {
        /// Pool.
        pool: String,
        /// Tenant.
        tenant: String,
        /// The pool's supernet.
        supernet: IpNet,
        /// Tenant subnet length.
        subnet_len: u8,
    },
    /// The static address belongs to another attachment.
    #[error("pool {pool}: static address {address} for tenant {tenant} is taken by {owner}")]
    StaticTaken {
        /// The address.
        address: IpAddr,
        /// Pool.
        pool: String,
        /// Tenant.
        tenant: String,
        /// Owner (container id/ifname).
        owner: String,
    },
    /// The static address cannot be given to this tenant.
    #[error("pool {pool}: static address {address} cannot be given to tenant {tenant}: {reason}")]
    StaticOutOfRange {
        /// The address.
        address: IpAddr,
        /// Pool.
        pool: String,
        /// Tenant.
        tenant: String,
        /// Why.
        reason: String,
    },
    /// The request is malformed.
    #[error("invalid address request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The attachment holds a different reservation.
    #[error("attachment {key} already holds a different reservation: {detail}")]
    AttachmentConflict {
        /// Owner.
        key: AttachmentKey,
        /// How it differs.
        detail: String,
    },
    /// The claim to confirm is gone.
    #[error("attachment {key} has no claim to confirm (released or reclaimed as stale)")]
    ClaimLost {
        /// Owner.
        key: AttachmentKey,
    },
    /// A pool was redefined while in use or overlaps another.
    #[error("pool {pool}: {detail}")]
    PoolConflict {
        /// Pool.
        pool: String,
        /// What conflicts.
        detail: String,
    },
    /// The etcd lease a write named is gone (expired or revoked): etcd
    /// answered gRPC `NotFound`. The etcd store re-grants and retries;
    /// anywhere else the claim the lease held is lost (code 136).
    #[error("address store: the lease is gone: {detail}")]
    LeaseLost {
        /// etcd's answer, with the member and the operation.
        detail: String,
    },
    /// The state lock was not acquired in time.
    #[error("network {network}: address store busy, lock not acquired within {waited:?}")]
    LockTimeout {
        /// Network whose lock was contended.
        network: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The cluster store (etcd) cannot be reached or did not answer in time.
    /// CNI code 11 for ADD/DEL/GC (the runtime retries); STATUS reports it as
    /// code 50 ([`IpamError::status_code`]).
    #[error("address store unavailable: {detail}")]
    Unavailable {
        /// Which endpoints, what failed, how long we waited.
        detail: String,
    },
    /// The state exists but cannot be understood.
    #[error("address store state {path} is corrupt: {detail}")]
    Corrupt {
        /// File.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// An I/O operation failed.
    #[error("address store: {context}: {source}")]
    Io {
        /// What was being done, and to which path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl IpamError {
    /// The CNI error code for this error (see [`codes`]).
    pub fn cni_code(&self) -> u32 {
        match self {
            IpamError::Exhausted { .. } => codes::ADDRESSES_EXHAUSTED,
            IpamError::SubnetsExhausted { .. } => codes::SUBNETS_EXHAUSTED,
            IpamError::StaticTaken { .. } => codes::STATIC_TAKEN,
            IpamError::StaticOutOfRange { .. } => codes::STATIC_OUT_OF_RANGE,
            IpamError::InvalidRequest { .. } => codes::INVALID_REQUEST,
            IpamError::AttachmentConflict { .. } => codes::ATTACHMENT_CONFLICT,
            IpamError::ClaimLost { .. } | IpamError::LeaseLost { .. } => codes::CLAIM_LOST,
            IpamError::PoolConflict { .. } => codes::POOL_CONFLICT,
            IpamError::LockTimeout { .. } | IpamError::Unavailable { .. } => codes::TRY_AGAIN_LATER,
            IpamError::Corrupt { .. } | IpamError::Io { .. } => codes::STORE_FAILURE,
        }
    }

    /// The CNI code for this error when it answers STATUS: an unreachable
    /// store is code 50 (plugin not available); anything else keeps
    /// [`IpamError::cni_code`].
    pub fn status_code(&self) -> u32 {
        match self {
            IpamError::Unavailable { .. } => codes::NOT_AVAILABLE,
            other => other.cni_code(),
        }
    }

    /// True for "no room" errors, which reclaiming stale claims may cure.
    pub fn is_exhaustion(&self) -> bool {
        matches!(
            self,
            IpamError::Exhausted { .. } | IpamError::SubnetsExhausted { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        IpamError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Checks a network name: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, at most 200
/// bytes. Network names become directory names, so this is what keeps
/// `..` and `/` out of paths.
pub fn validate_network_name(name: &str) -> Result<(), IpamError> {
    let mut chars = name.chars();
    let ok = name.len() <= 200
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidRequest {
            reason: format!("network name {name:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_keep_out_of_paths() {
        for ok in ["net1", "a", "k8s-pod-network", "a.b_c-d", "0"] {
            assert!(validate_network_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "..", ".hidden", "a/b", "../etc", "-x", "a b", "né", "a\0",
        ] {
            assert!(validate_network_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_network_name(&"a".repeat(201)).is_err());
    }

    #[test]
    fn every_error_has_its_documented_code() {
        let k = AttachmentKey::new("n", "c", "eth0");
        let net: IpNet = "10.0.0.0/24".parse().unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let cases: Vec<(IpamError, u32)> = vec![
            (
                IpamError::Exhausted {
                    pool: "p".into(),
                    tenant: "t".into(),
                    subnet: net,
                },
                codes::ADDRESSES_EXHAUSTED,
            ),
            (
                IpamError::SubnetsExhausted {
                    pool: "p".into(),
                    tenant: "t".into(),
                    supernet: net,
                    subnet_len: 26,
                },
                codes::SUBNETS_EXHAUSTED,
            ),
            (
                IpamError::StaticTaken {
                    address: ip,
                    pool: "p".into(),
                    tenant: "t".into(),
                    owner: "o".into(),
                },
                codes::STATIC_TAKEN,
            ),
            (
                IpamError::StaticOutOfRange {
                    address: ip,
                    pool: "p".into(),
                    tenant: "t".into(),
                    reason: "r".into(),
                },
                codes::STATIC_OUT_OF_RANGE,
            ),
            (
                IpamError::InvalidRequest { reason: "r".into() },
                codes::INVALID_REQUEST,
            ),
            (
                IpamError::AttachmentConflict {
                    key: k.clone(),
                    detail: "d".into(),
                },
                codes::ATTACHMENT_CONFLICT,
            ),
            (IpamError::ClaimLost { key: k }, codes::CLAIM_LOST),
            (
                IpamError::LeaseLost { detail: "d".into() },
                codes::CLAIM_LOST,
            ),
            (
                IpamError::PoolConflict {
                    pool: "p".into(),
                    detail: "d".into(),
                },
                codes::POOL_CONFLICT,
            ),
            (
                IpamError::LockTimeout {
                    network: "n".into(),
                    waited: Duration::from_secs(1),
                },
                codes::TRY_AGAIN_LATER,
            ),
            (
                IpamError::Corrupt {
                    path: "x".into(),
                    detail: "d".into(),
                },
                codes::STORE_FAILURE,
            ),
            (
                IpamError::io("x", std::io::Error::other("boom")),
                codes::STORE_FAILURE,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(e.cni_code(), code, "{e}");
        }
    }
}
