//! Attachment records: the apply engine's journal, one small file per
//! attachment on the node.
//!
//! ```text
//! <state_dir>/attachments/                    (0700)
//!   <network>/                                (0700)
//!     <sha256(container id "/" ifname)[..32]>.json
//! ```
//!
//! ADD writes the record, holding everything it is *about* to create (the
//! tenant, the netns, every interface with its host end, the ports), before
//! its first side effect, and marks it ready with the CNI result after its
//! last. DEL and GC undo what a record names, every undo tolerating what is
//! already gone, so a record left by an ADD killed at any point is enough to
//! clean up after it. File names are hashes, never a runtime- or
//! tenant-chosen string; the key is inside the file.
//!
//! Writes are a temp file renamed over the record (atomic). They are not
//! fsynced: what a record describes (veths, bridge ports, namespaces) does
//! not survive a power loss either, and the address store keeps its own
//! durable state; what matters is that a killed process leaves either the
//! old or the new record, which rename gives.

use std::fs::{self, DirBuilder};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ipam::{AttachmentKey, validate_network_name};
use crate::plan::InterfaceKind;

/// Format version of the record files.
pub const RECORD_VERSION: u32 = 1;

/// Where an attachment's ADD got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// ADD is running, or died: the resources named may partly exist.
    Applying,
    /// ADD succeeded.
    Ready,
}

/// One interface of an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordIface {
    /// Name inside the pod.
    pub name: String,
    /// SDN port or host link.
    pub kind: InterfaceKind,
    /// Host end of the veth.
    pub host_ifname: String,
    /// Pod end MAC, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Addresses on the pod end, once allocated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<IpNet>,
    /// Routes through it inside the pod (destination, gateway), for CHECK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<(IpNet, Option<std::net::IpAddr>)>,
    /// Host links: the gateway addresses on the host end, for CHECK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_gateways: Vec<IpNet>,
}

/// The record of one attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// [`RECORD_VERSION`].
    pub version: u32,
    /// The owner.
    pub key: AttachmentKey,
    /// CNI_NETNS at ADD.
    pub netns: String,
    /// The tenant.
    pub tenant: String,
    /// Progress.
    pub phase: Phase,
    /// The process that wrote the record (an `applying` record whose writer
    /// still runs is an ADD in flight, which GC leaves alone).
    pub writer_pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22), against pid reuse.
    pub writer_start: u64,
    /// The interfaces, primary first.
    pub interfaces: Vec<RecordIface>,
    /// Tenant subnets with their gateways, once allocated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<(IpNet, std::net::IpAddr)>,
    /// The tenant's bridge (or SDN network) name, once ensured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// The plan's annotations (hints the policy stages left for backends
    /// and operators), as planned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<crate::plan::Kv>,
    /// The interface group all the pod ends share
    /// ([`crate::netns::attachment_group`]), once they were made in it: DEL
    /// then deletes them with one request. Absent (an older record, or a
    /// group already in use in the pod) means link by link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// The ADD result in CNI 1.1.0 form, once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// A record-store failure.
#[derive(Debug, thiserror::Error)]
#[error("attachment records: {context}: {source}")]
pub struct RecordError {
    /// What was being done.
    pub context: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn err(context: impl Into<String>, source: std::io::Error) -> RecordError {
    RecordError {
        context: context.into(),
        source,
    }
}

/// The records under one state directory.
#[derive(Debug, Clone)]
pub struct Records {
    root: PathBuf,
}

impl Records {
    /// Records under `<state_dir>/attachments` (created on first write).
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("attachments"),
        }
    }

    fn network_dir(&self, network: &str) -> Result<PathBuf, RecordError> {
        validate_network_name(network).map_err(|e| {
            err(
                format!("network {network:?}"),
                std::io::Error::new(ErrorKind::InvalidInput, e.to_string()),
            )
        })?;
        Ok(self.root.join(network))
    }

    /// The file of `key`'s record.
    pub fn path(&self, key: &AttachmentKey) -> Result<PathBuf, RecordError> {
        let mut h = Sha256::new();
        h.update(key.container_id.as_bytes());
        h.update(b"/");
        h.update(key.ifname.as_bytes());
        let name = format!("{}.json", &hex::encode(h.finalize())[..32]);
        Ok(self.network_dir(&key.network)?.join(name))
    }

    /// `key`'s record, if any. A record that does not parse is an error: it
    /// is never silently ignored, since it may name live resources.
    pub fn load(&self, key: &AttachmentKey) -> Result<Option<Record>, RecordError> {
        let path = self.path(key)?;
        read(&path)
    }

    /// Writes (replaces) a record atomically.
    pub fn store(&self, rec: &Record) -> Result<(), RecordError> {
        let path = self.path(&rec.key)?;
        let dir = path.parent().expect("records live in a directory");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err(format!("creating {}", dir.display()), e))?;
        let bytes = serde_json::to_vec_pretty(rec).expect("records serialise");
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("r"),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            err(format!("writing {}", path.display()), e)
        })
    }

    /// Removes `key`'s record; a missing one is success.
    pub fn remove(&self, key: &AttachmentKey) -> Result<(), RecordError> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(err(format!("removing {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// Every record of `network` (all networks when `None`). Unreadable
    /// records are reported, not skipped.
    pub fn list(&self, network: Option<&str>) -> Result<Vec<Record>, RecordError> {
        let dirs: Vec<PathBuf> = match network {
            Some(n) => vec![self.network_dir(n)?],
            None => match fs::read_dir(&self.root) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) if e.kind() == ErrorKind::NotFound => vec![],
                Err(e) => return Err(err(format!("listing {}", self.root.display()), e)),
            },
        };
        let mut out = Vec::new();
        for d in dirs {
            let rd = match fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(err(format!("listing {}", d.display()), e)),
            };
            let mut paths: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            paths.sort();
            for p in paths {
                if let Some(r) = read(&p)? {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// True when the records directory is usable (STATUS): it exists and is
    /// writable, or can be created.
    pub fn status(&self) -> Result<(), RecordError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| err(format!("creating {}", self.root.display()), e))?;
        let probe = self.root.join(format!(".probe-{}", std::process::id()));
        fs::write(&probe, b"ok").map_err(|e| err(format!("writing {}", probe.display()), e))?;
        let _ = fs::remove_file(&probe);
        Ok(())
    }
}

fn read(path: &Path) -> Result<Option<Record>, RecordError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("reading {}", path.display()), e)),
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        err(
            format!("parsing {}", path.display()),
            std::io::Error::new(ErrorKind::InvalidData, e.to_string()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cid: &str) -> Record {
        Record {
            version: RECORD_VERSION,
            key: AttachmentKey::new("net", cid, "eth0"),
            netns: "/run/netns/x".into(),
            tenant: "acme".into(),
            phase: Phase::Applying,
            writer_pid: 1,
            writer_start: 0,
            interfaces: vec![RecordIface {
                name: "eth0".into(),
                kind: InterfaceKind::SdnPort,
                host_ifname: "tn0".into(),
                mac: None,
                addrs: vec![],
                routes: vec![],
                host_gateways: vec![],
            }],
            subnets: vec![],
            bridge: None,
            annotations: Vec::new(),
            group: None,
            result: None,
        }
    }

    #[test]
    fn store_load_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(d.path());
        assert!(r.load(&rec("a").key).unwrap().is_none());
        r.store(&rec("a")).unwrap();
        let mut b = rec("b");
        b.phase = Phase::Ready;
        r.store(&b).unwrap();
        r.store(&b).unwrap();
        assert_eq!(r.load(&b.key).unwrap().unwrap(), b);
        assert_eq!(r.list(Some("net")).unwrap().len(), 2);
        assert_eq!(r.list(None).unwrap().len(), 2);
        assert!(r.list(Some("other")).unwrap().is_empty());
        r.remove(&b.key).unwrap();
        r.remove(&b.key).unwrap();
        assert_eq!(r.list(None).unwrap().len(), 1);
        // No temp files are left behind.
        let n = fs::read_dir(d.path().join("attachments/net"))
            .unwrap()
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn names_are_hashes_and_bad_networks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(d.path());
        let p = r
            .path(&AttachmentKey::new("net", "../../x", "a/b"))
            .unwrap();
        assert_eq!(p.parent().unwrap(), d.path().join("attachments/net"));
        assert!(r.path(&AttachmentKey::new("../n", "c", "eth0")).is_err());
    }

    #[test]
    fn a_corrupt_record_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(d.path());
        let k = rec("a").key;
        let p = r.path(&k).unwrap();
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, b"{not json").unwrap();
        let e = r.load(&k).unwrap_err();
        assert!(e.to_string().contains("parsing"), "{e}");
    }
}
