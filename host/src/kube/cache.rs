//! The node-local cache of labels read from the API server, so that most
//! ADDs cost two small file reads instead of a TLS handshake and two GETs:
//!
//! ```text
//! <state_dir>/kube/                    (0700)
//!   namespaces/<sha256(name)[..32]>.json
//!   pods/<sha256(namespace "/" name)[..32]>.json
//! ```
//!
//! An entry is used while younger than the TTL and, for pods, only when its
//! uid is the pod's (a pod deleted and created again under the same name is
//! another pod). File names are hashes, never a runtime-given string.
//! Writes are a temp file renamed over the entry: a reader sees the old
//! entry or the new one. The agent prunes expired entries.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What is cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A namespace's labels, keyed by its name.
    Namespace,
    /// A pod's labels, keyed by `namespace/name`.
    Pod,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
        }
    }
}

/// One cached object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The key (namespace name, or `namespace/name`), checked on read.
    pub key: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// When it was read from the API server (ms since the epoch).
    pub fetched_ms: u64,
}

/// The cache under one state directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    ttl: Duration,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Cache {
    /// The cache of `state_dir`; entries live `ttl` (zero: never used).
    pub fn new(state_dir: &Path, ttl: Duration) -> Self {
        Self {
            root: state_dir.join("kube"),
            ttl,
        }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, kind: Kind, key: &str) -> PathBuf {
        let h = Sha256::digest(key.as_bytes());
        self.root
            .join(kind.dir())
            .join(format!("{}.json", &hex::encode(h)[..32]))
    }

    /// A fresh entry for `key` (and `uid`, when known), if there is one.
    pub fn get(&self, kind: Kind, key: &str, uid: Option<&str>) -> Option<Entry> {
        if self.ttl.is_zero() {
            return None;
        }
        let bytes = std::fs::read(self.path(kind, key)).ok()?;
        let e: Entry = serde_json::from_slice(&bytes).ok()?;
        let age = now_ms().saturating_sub(e.fetched_ms);
        let fresh = e.key == key
            && age < self.ttl.as_millis() as u64
            && uid.is_none_or(|u| u.is_empty() || u == e.uid);
        fresh.then_some(e)
    }

    /// Stores `entry` (best effort: a cache that cannot be written only
    /// costs the next ADD a GET).
    pub fn put(&self, kind: Kind, entry: &Entry) {
        if self.ttl.is_zero() {
            return;
        }
        let path = self.path(kind, &entry.key);
        let r = (|| -> std::io::Result<()> {
            let dir = path.parent().expect("entry paths have a parent");
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            let tmp = dir.join(format!(".tmp.{}", std::process::id()));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec(entry).map_err(std::io::Error::other)?)?;
            drop(f);
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = r {
            tracing::debug!(path = %path.display(), error = %e, "kube cache entry not written");
        }
    }

    /// Removes entries older than `max_age` (the agent's housekeeping);
    /// returns how many.
    pub fn prune(&self, max_age: Duration) -> usize {
        let now = now_ms();
        let mut removed = 0;
        for kind in [Kind::Namespace, Kind::Pod] {
            let Ok(dir) = std::fs::read_dir(self.root.join(kind.dir())) else {
                continue;
            };
            for f in dir.flatten() {
                let old = std::fs::read(f.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
                    .is_none_or(|e| now.saturating_sub(e.fetched_ms) > max_age.as_millis() as u64);
                if old && std::fs::remove_file(f.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, uid: &str, age_ms: u64) -> Entry {
        Entry {
            key: key.into(),
            uid: uid.into(),
            labels: BTreeMap::from([("a".into(), "b".into())]),
            fetched_ms: now_ms() - age_ms,
        }
    }

    #[test]
    fn fresh_entries_only_and_pods_by_uid() {
        let dir = tempfile::tempdir().unwrap();
        let c = Cache::new(dir.path(), Duration::from_secs(30));
        c.put(Kind::Pod, &entry("ns/p", "u1", 0));
        assert_eq!(c.get(Kind::Pod, "ns/p", Some("u1")).unwrap().uid, "u1");
        assert!(c.get(Kind::Pod, "ns/p", None).is_some());
        assert!(
            c.get(Kind::Pod, "ns/p", Some("u2")).is_none(),
            "another pod"
        );
        assert!(
            c.get(Kind::Namespace, "ns/p", None).is_none(),
            "kinds apart"
        );
        c.put(Kind::Namespace, &entry("ns", "n1", 31_000));
        assert!(c.get(Kind::Namespace, "ns", None).is_none(), "expired");
        assert_eq!(c.prune(Duration::from_secs(30)), 1);
        assert!(c.get(Kind::Pod, "ns/p", None).is_some(), "kept");
        let off = Cache::new(dir.path(), Duration::ZERO);
        assert!(off.get(Kind::Pod, "ns/p", None).is_none());
        // No temporary file is left.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("kube/pods"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
    }
}
