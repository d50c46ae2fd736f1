//! A recording, in-memory [`IpStore`] for unit tests of code that drives a
//! store (the apply engine): it records every call in order, can be told to
//! fail the Nth call, and otherwise allocates with the same core as
//! [`LocalStore`](super::LocalStore) (no cooldown, claims never go stale),
//! so the addresses it hands out obey the real rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::alloc::{Claim, Ctx, NetworkState};
use super::{
    Allocation, AttachmentKey, ClaimState, GcReport, IpStore, IpamError, TenantSubnet,
    validate_network_name,
};
use crate::plan::AddressSpec;

/// One call made to a [`FakeIpStore`], with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpStoreCall {
    /// [`IpStore::reserve`].
    Reserve {
        /// Owner.
        key: AttachmentKey,
        /// Tenant.
        tenant: String,
        /// Requests.
        requests: Vec<AddressSpec>,
    },
    /// [`IpStore::confirm`].
    Confirm(AttachmentKey),
    /// [`IpStore::release`].
    Release(AttachmentKey),
    /// [`IpStore::gc`].
    Gc {
        /// Network.
        network: String,
        /// Valid (container id, ifname) pairs.
        valid: Vec<(String, String)>,
    },
    /// [`IpStore::list`].
    List(Option<String>),
    /// [`IpStore::tenant_subnets`].
    TenantSubnets(Option<String>),
    /// [`IpStore::status`].
    Status,
}

#[derive(Default)]
struct Inner {
    calls: Vec<IpStoreCall>,
    failures: HashMap<usize, IpamError>,
    networks: BTreeMap<String, NetworkState>,
}

/// In-memory recording fake of [`IpStore`].
#[derive(Default)]
pub struct FakeIpStore {
    inner: Mutex<Inner>,
}

fn never_stale(_: &Claim, _: u64) -> bool {
    false
}

const CLAIM: Claim = Claim {
    pid: 0,
    start_time: 0,
    deadline_ms: u64::MAX,
};

impl FakeIpStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`th call (1-based, counting every method) fail with
    /// `error` before it has any effect. The call is still recorded.
    pub fn fail_call(&self, n: usize, error: IpamError) {
        self.lock().failures.insert(n, error);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<IpStoreCall> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock leaves a usable state.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `call`, applies an injected failure, then runs `f`.
    fn call<T>(
        &self,
        call: IpStoreCall,
        f: impl FnOnce(&mut BTreeMap<String, NetworkState>) -> Result<T, IpamError>,
    ) -> Result<T, IpamError> {
        let mut inner = self.lock();
        inner.calls.push(call);
        let n = inner.calls.len();
        if let Some(e) = inner.failures.remove(&n) {
            return Err(e);
        }
        f(&mut inner.networks)
    }
}

fn ctx(network: &str) -> Ctx<'_> {
    Ctx {
        network,
        now_ms: 0,
        cooldown_ms: 0,
        is_stale: &never_stale,
    }
}

impl IpStore for FakeIpStore {
    fn reserve(
        &self,
        key: &AttachmentKey,
        tenant: &str,
        requests: &[AddressSpec],
    ) -> Result<Vec<Allocation>, IpamError> {
        let call = IpStoreCall::Reserve {
            key: key.clone(),
            tenant: tenant.to_owned(),
            requests: requests.to_vec(),
        };
        self.call(call, |nets| {
            key.validate()?;
            let st = nets
                .entry(key.network.clone())
                .or_insert_with(NetworkState::new);
            st.reserve(ctx(&key.network), key, tenant, requests, CLAIM)
                .map(|(a, _)| a)
        })
    }

    fn confirm(&self, key: &AttachmentKey) -> Result<(), IpamError> {
        self.call(IpStoreCall::Confirm(key.clone()), |nets| {
            let st = nets
                .get_mut(&key.network)
                .ok_or_else(|| IpamError::ClaimLost { key: key.clone() })?;
            st.confirm(key).map(|_| ())
        })
    }

    fn release(&self, key: &AttachmentKey) -> Result<Vec<Allocation>, IpamError> {
        self.call(IpStoreCall::Release(key.clone()), |nets| {
            // No cooldown in the fake: freed space is reusable at once.
            Ok(nets
                .get_mut(&key.network)
                .map(|st| {
                    let freed = st.release(key, 0);
                    st.housekeep(0, 0);
                    freed
                })
                .unwrap_or_default())
        })
    }

    fn gc(&self, network: &str, valid: &[(String, String)]) -> Result<GcReport, IpamError> {
        let call = IpStoreCall::Gc {
            network: network.to_owned(),
            valid: valid.to_vec(),
        };
        self.call(call, |nets| {
            validate_network_name(network)?;
            Ok(nets
                .get_mut(network)
                .map(|st| {
                    let report = st.gc(ctx(network), valid);
                    st.housekeep(0, 0);
                    report
                })
                .unwrap_or_default())
        })
    }

    fn list(
        &self,
        network: Option<&str>,
    ) -> Result<Vec<(AttachmentKey, Allocation, ClaimState)>, IpamError> {
        self.call(IpStoreCall::List(network.map(str::to_owned)), |nets| {
            Ok(nets
                .iter()
                .filter(|(n, _)| network.is_none_or(|w| w == n.as_str()))
                .flat_map(|(n, st)| st.rows(n))
                .collect())
        })
    }

    fn tenant_subnets(&self, network: Option<&str>) -> Result<Vec<TenantSubnet>, IpamError> {
        self.call(
            IpStoreCall::TenantSubnets(network.map(str::to_owned)),
            |nets| {
                Ok(nets
                    .iter()
                    .filter(|(n, _)| network.is_none_or(|w| w == n.as_str()))
                    .flat_map(|(n, st)| st.subnets(n))
                    .collect())
            },
        )
    }

    fn status(&self) -> Result<(), IpamError> {
        self.call(IpStoreCall::Status, |_| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{IpFamily, PoolSpec};

    fn v4() -> AddressSpec {
        AddressSpec {
            family: IpFamily::Ipv4,
            pool: Some(PoolSpec {
                name: "pods".into(),
                supernet: "10.0.0.0/16".parse().unwrap(),
                subnet_len: 24,
                exclude: vec![],
            }),
            static_address: None,
        }
    }

    #[test]
    fn records_calls_and_fails_the_nth() {
        let fake = FakeIpStore::new();
        let k1 = AttachmentKey::new("net", "c1", "eth0");
        let k2 = AttachmentKey::new("net", "c2", "eth0");
        fake.fail_call(
            3,
            IpamError::LockTimeout {
                network: "net".into(),
                waited: std::time::Duration::from_secs(1),
            },
        );

        let a1 = fake.reserve(&k1, "t", &[v4()]).unwrap();
        assert_eq!(a1[0].address.to_string(), "10.0.0.2/24");
        fake.confirm(&k1).unwrap();
        let err = fake.reserve(&k2, "t", &[v4()]).unwrap_err();
        assert_eq!(err.cni_code(), crate::cni::codes::TRY_AGAIN_LATER);
        // The failed call had no effect; the retry gets the next address.
        let a2 = fake.reserve(&k2, "t", &[v4()]).unwrap();
        assert_eq!(a2[0].address.to_string(), "10.0.0.3/24");
        assert_eq!(fake.release(&k1).unwrap(), a1);
        assert!(fake.release(&k1).unwrap().is_empty());
        let rows = fake.list(Some("net")).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].2, ClaimState::Pending);

        let reserve = |key: &AttachmentKey| IpStoreCall::Reserve {
            key: key.clone(),
            tenant: "t".into(),
            requests: vec![v4()],
        };
        assert_eq!(
            fake.calls(),
            vec![
                reserve(&k1),
                IpStoreCall::Confirm(k1.clone()),
                reserve(&k2),
                reserve(&k2),
                IpStoreCall::Release(k1.clone()),
                IpStoreCall::Release(k1.clone()),
                IpStoreCall::List(Some("net".into())),
            ]
        );
    }

    #[test]
    fn gc_and_confirm_follow_the_real_rules() {
        let fake = FakeIpStore::new();
        let k = AttachmentKey::new("net", "c1", "eth0");
        assert_eq!(
            fake.confirm(&k).unwrap_err().cni_code(),
            crate::cni::codes::CLAIM_LOST
        );
        fake.reserve(&k, "t", &[v4()]).unwrap();
        fake.confirm(&k).unwrap();
        let report = fake.gc("net", &[]).unwrap();
        assert_eq!(report.released, vec![k]);
        assert!(fake.list(None).unwrap().is_empty());
        fake.status().unwrap();
        assert!(fake.tenant_subnets(None).unwrap().is_empty());
    }
}
