//! Opening the backends a configuration names.

use std::sync::Arc;

use crate::cni::{CniError, code};
use crate::config::{Config, SdnKind, StoreKind};
use crate::etcd::{EtcdConn, EtcdError, EtcdSettings};
use crate::ipam::{IpStore, LocalOptions, LocalStore};
use crate::netns::{Netns, RtNetns};
use crate::sdn::{LinuxSdn, Sdn, SdnOptions, ServiceScope};

/// The backends of one invocation, owned.
pub struct Backends {
    /// The tenant address store (local files or etcd).
    pub store: Box<dyn IpStore>,
    /// The node-local store for host-link addresses.
    pub link_store: Box<dyn IpStore>,
    /// The SDN.
    pub sdn: Box<dyn Sdn>,
    /// Pod namespaces.
    pub netns: Box<dyn Netns>,
}

impl Backends {
    /// Opens what `cfg` names. Nothing is contacted beyond what opening
    /// needs (netlink sockets, the state directory): etcd and MidoNet are
    /// reached on first use.
    pub fn open(cfg: &Config) -> Result<Self, CniError> {
        let local = LocalStore::open(&cfg.state_dir, LocalOptions::default()).map_err(|e| {
            CniError::new(
                e.cni_code(),
                "cannot open the local address store",
                crate::cni::error::error_chain(&e),
            )
        })?;
        // Host-link addresses live in the same local store, under their own
        // network name (`link_key`) and lock: one open serves both.
        let links = local.clone();
        // One etcd connection per exec, shared by the address store and the
        // MidoNet records (TLS, authentication and failover alike); it
        // contacts nothing until the first operation.
        let etcd = if cfg.store == StoreKind::Etcd || cfg.sdn == SdnKind::Midonet {
            let bad = |e: EtcdError| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "invalid etcd configuration",
                    e.message(),
                )
            };
            let settings = EtcdSettings::from_config(cfg).map_err(bad)?;
            Some(Arc::new(EtcdConn::open(&settings).map_err(bad)?))
        } else {
            None
        };
        let store: Box<dyn IpStore> = match (cfg.store, &etcd) {
            (StoreKind::Etcd, Some(conn)) => Box::new(
                crate::ipam::EtcdStore::connect_shared(cfg, Arc::clone(conn)).map_err(|e| {
                    CniError::new(
                        e.cni_code(),
                        "cannot open the etcd address store",
                        crate::cni::error::error_chain(&e),
                    )
                })?,
            ),
            _ => Box::new(local),
        };
        let sdn: Box<dyn Sdn> = match cfg.sdn {
            SdnKind::Linux => Box::new(
                LinuxSdn::new(SdnOptions {
                    masquerade: cfg.masquerade,
                    nft: find_program("nft"),
                    lock_dir: cfg.state_dir.join("locks"),
                    services: match cfg.isolation.service_tenants {
                        crate::config::ServiceTenants::Any => ServiceScope::Any,
                        crate::config::ServiceTenants::Same => ServiceScope::SameTenant,
                    },
                    shared_tenants: cfg.isolation.shared_tenants.clone(),
                    keep_idle_tenants: cfg.isolation.keep_idle_tenants,
                })
                .map_err(|e| {
                    CniError::new(
                        e.cni_code(),
                        "cannot open the Linux SDN",
                        crate::cni::error::error_chain(&e),
                    )
                })?,
            ),
            SdnKind::Midonet => {
                let conn = etcd.clone().expect("opened for MidoNet above");
                Box::new(
                    crate::sdn::MidonetSdn::connect_shared(cfg, conn).map_err(|e| {
                        CniError::new(
                            e.cni_code(),
                            "cannot open the MidoNet SDN",
                            crate::cni::error::error_chain(&e),
                        )
                    })?,
                )
            }
        };
        // Backends serve one operation (the CNI binary, and each probe or GC
        // pass of the agent opens its own): pod sockets are kept for it.
        let netns = RtNetns::for_one_operation().map_err(|e| {
            CniError::new(
                e.cni_code(),
                "cannot open netlink",
                crate::cni::error::error_chain(&e),
            )
        })?;
        Ok(Self {
            store,
            link_store: Box::new(links),
            sdn,
            netns: Box::new(netns),
        })
    }

    /// An engine over these backends, with records and locks under
    /// `cfg.state_dir`.
    pub fn engine(&self, cfg: &Config) -> super::Engine<'_> {
        super::Engine::new(
            self.store.as_ref(),
            self.link_store.as_ref(),
            self.sdn.as_ref(),
            self.netns.as_ref(),
            &cfg.state_dir,
        )
    }
}

/// `name` from PATH, else from the system directories: runtimes do not
/// always hand plugins a PATH (CNI does not require one).
fn find_program(name: &str) -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| name.into())
}
