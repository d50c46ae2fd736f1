//! A recording [`Netns`] for unit tests of the apply engine: it keeps an
//! in-memory model of pod links (so CHECK and DEL behave like the real
//! backend), records every call, and can fail the Nth one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;

use super::{
    HostLinkSpec, HostSideState, LinkState, MacAddr, Netns, NetnsError, NodeEntry, ResolvedRoute,
    VethInfo, VethSpec, derive_mac, is_tenet_link,
};

/// One recorded call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsCall {
    /// [`Netns::create_veth`].
    CreateVeth(VethSpec),
    /// [`Netns::configure`].
    Configure {
        /// Pod namespace.
        netns: PathBuf,
        /// Interface.
        ifname: String,
        /// Addresses.
        addrs: Vec<IpNet>,
        /// Routes.
        routes: Vec<ResolvedRoute>,
        /// Sysctls.
        sysctls: Vec<(String, String)>,
    },
    /// [`Netns::host_side`].
    HostSide(HostLinkSpec),
    /// [`Netns::delete`].
    Delete {
        /// Pod namespace, if any.
        netns: Option<PathBuf>,
        /// Interface.
        ifname: String,
        /// Host end.
        host_ifname: String,
    },
    /// [`Netns::inspect`].
    Inspect {
        /// Pod namespace.
        netns: PathBuf,
        /// Interface.
        ifname: String,
    },
    /// [`Netns::host_link_exists`].
    HostLinkExists(String),
}

impl NetnsCall {
    /// The trait method's name, for messages and quick assertions.
    pub fn name(&self) -> &'static str {
        match self {
            NetnsCall::CreateVeth(_) => "create_veth",
            NetnsCall::Configure { .. } => "configure",
            NetnsCall::HostSide(_) => "host_side",
            NetnsCall::Delete { .. } => "delete",
            NetnsCall::Inspect { .. } => "inspect",
            NetnsCall::HostLinkExists(_) => "host_link_exists",
        }
    }
}

#[derive(Default)]
struct Inner {
    calls: Vec<NetnsCall>,
    fail_at: Option<usize>,
    next_index: u32,
    /// (netns, ifname) -> state of the pod end.
    pods: BTreeMap<(PathBuf, String), LinkState>,
    /// host_ifname -> (netns, ifname) of its peer.
    hosts: BTreeMap<String, (PathBuf, String)>,
    /// host_ifname -> its node side, once given one.
    host_sides: BTreeMap<String, HostSideState>,
    /// The node's own addresses and routes (see `set_node_entries`).
    node: Vec<NodeEntry>,
}

/// The recording fake. Cheap to build; share it by reference.
#[derive(Default)]
pub struct FakeNetns {
    inner: Mutex<Inner>,
}

impl FakeNetns {
    /// An empty fake that succeeds at everything it can.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`th call from now on (1-based, counting every method)
    /// fail with [`NetnsError::Injected`] and change nothing.
    pub fn fail_call(&self, n: usize) {
        let mut g = self.lock();
        g.fail_at = Some(g.calls.len() + n);
    }

    /// Every call so far, failed ones included, in order.
    pub fn calls(&self) -> Vec<NetnsCall> {
        self.lock().calls.clone()
    }

    /// The names of the calls so far.
    pub fn call_names(&self) -> Vec<&'static str> {
        self.lock().calls.iter().map(NetnsCall::name).collect()
    }

    /// Sets the node's own addresses and routes that
    /// [`Netns::node_overlaps`] reports from.
    pub fn set_node_entries(&self, entries: Vec<NodeEntry>) {
        self.lock().node = entries;
    }

    /// The modelled pod end, if it exists.
    pub fn pod_link(&self, netns: &Path, ifname: &str) -> Option<LinkState> {
        self.lock()
            .pods
            .get(&(netns.to_owned(), ifname.to_owned()))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the calls from the others.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `call`; errors when it is the one chosen to fail.
    fn record(&self, call: NetnsCall) -> Result<std::sync::MutexGuard<'_, Inner>, NetnsError> {
        let mut g = self.lock();
        let name = call.name();
        g.calls.push(call);
        if g.fail_at == Some(g.calls.len()) {
            return Err(NetnsError::Injected(name.into()));
        }
        Ok(g)
    }
}

impl Netns for FakeNetns {
    fn create_veth(&self, spec: &VethSpec) -> Result<VethInfo, NetnsError> {
        let mut g = self.record(NetnsCall::CreateVeth(spec.clone()))?;
        let key = (spec.netns.clone(), spec.ifname.clone());
        if g.pods.contains_key(&key) {
            return Err(NetnsError::IfnameExists {
                ifname: spec.ifname.clone(),
                netns: spec.netns.clone(),
            });
        }
        let mac = spec
            .mac
            .unwrap_or_else(|| derive_mac(&spec.container_id, &spec.ifname));
        g.next_index += 2;
        let ifindex = g.next_index;
        g.pods.insert(
            key.clone(),
            LinkState {
                ifindex,
                mac: Some(mac),
                mtu: spec.mtu.unwrap_or(1500),
                up: true,
                addrs: Vec::new(),
                routes: Vec::new(),
            },
        );
        g.hosts.insert(spec.host_ifname.clone(), key);
        Ok(VethInfo {
            mac,
            host_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
            ifindex,
            host_ifindex: ifindex + 1,
        })
    }

    fn configure(
        &self,
        netns: &Path,
        ifname: &str,
        addrs: &[IpNet],
        routes: &[ResolvedRoute],
        sysctls: &[(String, String)],
    ) -> Result<(), NetnsError> {
        let mut g = self.record(NetnsCall::Configure {
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
            addrs: addrs.to_vec(),
            routes: routes.to_vec(),
            sysctls: sysctls.to_vec(),
        })?;
        let link = g
            .pods
            .get_mut(&(netns.to_owned(), ifname.to_owned()))
            .ok_or_else(|| NetnsError::LinkNotFound {
                ifname: ifname.to_owned(),
                netns: netns.display().to_string(),
            })?;
        for a in addrs {
            if !link.addrs.contains(a) {
                link.addrs.push(*a);
            }
        }
        for r in routes {
            link.routes
                .retain(|x| x.dst != r.dst || x.metric != r.metric);
            link.routes.push(r.clone());
        }
        Ok(())
    }

    fn host_side(&self, spec: &HostLinkSpec) -> Result<(), NetnsError> {
        let mut g = self.record(NetnsCall::HostSide(spec.clone()))?;
        if !g.hosts.contains_key(&spec.host_ifname) {
            return Err(NetnsError::LinkNotFound {
                ifname: spec.host_ifname.clone(),
                netns: "the node".into(),
            });
        }
        g.host_sides.insert(
            spec.host_ifname.clone(),
            HostSideState {
                addrs: spec.gateways.clone(),
                routes: spec
                    .pod_addrs
                    .iter()
                    .map(|a| ResolvedRoute::link(IpNet::from(*a)))
                    .collect(),
            },
        );
        Ok(())
    }

    /// Not recorded (it changes nothing).
    fn inspect_host_side(&self, host_ifname: &str) -> Result<Option<HostSideState>, NetnsError> {
        let g = self.lock();
        if !g.hosts.contains_key(host_ifname) {
            return Ok(None);
        }
        Ok(Some(g.host_sides.get(host_ifname).cloned().unwrap_or(
            HostSideState {
                addrs: Vec::new(),
                routes: Vec::new(),
            },
        )))
    }

    fn delete(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<(), NetnsError> {
        let mut g = self.record(NetnsCall::Delete {
            netns: netns.map(Path::to_owned),
            ifname: ifname.to_owned(),
            host_ifname: host_ifname.to_owned(),
        })?;
        if let Some(p) = netns {
            let key = (p.to_owned(), ifname.to_owned());
            if g.pods.remove(&key).is_some() {
                g.hosts.retain(|_, v| *v != key);
            }
        }
        if let Some(key) = g.hosts.remove(host_ifname) {
            g.pods.remove(&key);
        }
        let live: Vec<String> = g.hosts.keys().cloned().collect();
        g.host_sides.retain(|h, _| live.contains(h));
        Ok(())
    }

    fn inspect(&self, netns: &Path, ifname: &str) -> Result<Option<LinkState>, NetnsError> {
        let g = self.record(NetnsCall::Inspect {
            netns: netns.to_owned(),
            ifname: ifname.to_owned(),
        })?;
        Ok(g.pods.get(&(netns.to_owned(), ifname.to_owned())).cloned())
    }

    fn host_link_exists(&self, host_ifname: &str) -> Result<bool, NetnsError> {
        let g = self.record(NetnsCall::HostLinkExists(host_ifname.to_owned()))?;
        Ok(g.hosts.contains_key(host_ifname))
    }

    /// Not recorded (it changes nothing, and the failure-injection tests
    /// count the calls that do): what `set_node_entries` gave, filtered as
    /// the real backend filters.
    fn node_overlaps(&self, ranges: &[IpNet]) -> Result<Vec<NodeEntry>, NetnsError> {
        Ok(self
            .lock()
            .node
            .iter()
            .filter(|e| e.device.as_deref().is_none_or(|d| !is_tenet_link(d)))
            .filter(|e| {
                ranges
                    .iter()
                    .any(|r| crate::plan::authority::overlaps(*r, e.range()))
            })
            .cloned()
            .collect())
    }

    /// Not recorded (it changes nothing): refuses only an empty path.
    fn check_pod_netns(&self, netns: &Path) -> Result<(), NetnsError> {
        if netns.as_os_str().is_empty() {
            return Err(NetnsError::InvalidNetns {
                path: netns.to_owned(),
                reason: "empty path".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::host_ifname;

    fn spec(ifname: &str) -> VethSpec {
        VethSpec {
            container_id: "c1".into(),
            ifname: ifname.into(),
            host_ifname: host_ifname("c1", ifname),
            netns: "/run/netns/p1".into(),
            mtu: Some(1450),
            mac: None,
            link_local: None,
            group: None,
        }
    }

    #[test]
    fn records_and_models_links() {
        let f = FakeNetns::new();
        let s = spec("eth0");
        let info = f.create_veth(&s).unwrap();
        assert_eq!(info.mac, derive_mac("c1", "eth0"));
        assert!(matches!(
            f.create_veth(&s),
            Err(NetnsError::IfnameExists { .. })
        ));
        let a: IpNet = "10.1.0.5/24".parse().unwrap();
        f.configure(&s.netns, "eth0", &[a], &[], &[]).unwrap();
        let st = f.inspect(&s.netns, "eth0").unwrap().unwrap();
        assert_eq!(st.addrs, vec![a]);
        assert_eq!(st.mtu, 1450);
        assert!(f.host_link_exists(&s.host_ifname).unwrap());
        // DEL by host end only (no netns), twice.
        f.delete(None, "eth0", &s.host_ifname).unwrap();
        f.delete(None, "eth0", &s.host_ifname).unwrap();
        assert!(f.inspect(&s.netns, "eth0").unwrap().is_none());
        assert!(!f.host_link_exists(&s.host_ifname).unwrap());
        assert_eq!(
            f.call_names(),
            [
                "create_veth",
                "create_veth",
                "configure",
                "inspect",
                "host_link_exists",
                "delete",
                "delete",
                "inspect",
                "host_link_exists"
            ]
        );
        assert_eq!(f.calls()[0], NetnsCall::CreateVeth(s));
    }

    #[test]
    fn fails_the_nth_call_and_changes_nothing() {
        let f = FakeNetns::new();
        f.fail_call(2);
        f.create_veth(&spec("eth0")).unwrap();
        let e = f.create_veth(&spec("eth1")).unwrap_err();
        assert!(matches!(e, NetnsError::Injected(ref m) if m == "create_veth"));
        assert_eq!(e.cni_code(), crate::cni::codes::INJECTED);
        assert!(f.pod_link(Path::new("/run/netns/p1"), "eth1").is_none());
        // Only that one call fails.
        f.create_veth(&spec("eth1")).unwrap();
        assert_eq!(f.calls().len(), 3);
    }

    #[test]
    fn configure_needs_the_link() {
        let f = FakeNetns::new();
        let e = f
            .configure(Path::new("/run/netns/p1"), "eth0", &[], &[], &[])
            .unwrap_err();
        assert!(matches!(e, NetnsError::LinkNotFound { .. }));
    }
}
