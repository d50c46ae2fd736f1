//! A recording in-memory [`TopologyRecords`] for unit tests: etcd's
//! semantics for the operations tenet uses (revisions, compares, leases),
//! every operation recorded, leases expirable on demand.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::records::{Cmp, Kv, Op, RecordsError, TopologyRecords};

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    mod_rev: i64,
    lease: Option<i64>,
}

#[derive(Default)]
struct Inner {
    rev: i64,
    kv: BTreeMap<String, Entry>,
    leases: HashMap<i64, (Instant, Duration)>,
    next_lease: i64,
    ops: Vec<String>,
    unavailable: bool,
}

impl Inner {
    fn expire(&mut self) {
        let now = Instant::now();
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.drop_lease(id);
        }
    }

    fn drop_lease(&mut self, id: i64) {
        self.leases.remove(&id);
        self.kv.retain(|_, e| e.lease != Some(id));
    }

    fn holds(&self, c: &Cmp) -> bool {
        match c {
            Cmp::Absent(k) => !self.kv.contains_key(k),
            Cmp::ModRev(k, r) => self.kv.get(k).is_some_and(|e| e.mod_rev == *r),
            Cmp::Value(k, v) => self.kv.get(k).is_some_and(|e| &e.value == v),
            Cmp::PrefixEmpty(p) => !self.kv.keys().any(|k| k.starts_with(p.as_str())),
        }
    }
}

/// The fake store.
#[derive(Default)]
pub struct MemoryRecords {
    inner: Mutex<Inner>,
}

impl MemoryRecords {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The operations so far (`get <key>`, `list <prefix>`, `txn ok|failed`,
    /// `grant`, `keep_alive`, `revoke`).
    pub fn ops(&self) -> Vec<String> {
        self.lock().ops.clone()
    }

    /// Every key.
    pub fn keys(&self) -> Vec<String> {
        let mut g = self.lock();
        g.expire();
        g.kv.keys().cloned().collect()
    }

    /// Ends every lease now, as if their holders had crashed long ago.
    pub fn expire_all_leases(&self) {
        let mut g = self.lock();
        let ids: Vec<i64> = g.leases.keys().copied().collect();
        for id in ids {
            g.drop_lease(id);
        }
    }

    /// Makes every operation fail (the store is down) or work again.
    pub fn set_unavailable(&self, down: bool) {
        self.lock().unavailable = down;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn op(&self, what: String) -> Result<std::sync::MutexGuard<'_, Inner>, RecordsError> {
        let mut g = self.lock();
        g.ops.push(what);
        if g.unavailable {
            return Err(RecordsError::Unavailable(
                "memory store set unavailable".into(),
            ));
        }
        g.expire();
        Ok(g)
    }
}

impl TopologyRecords for MemoryRecords {
    fn get(&self, key: &str) -> Result<Option<Kv>, RecordsError> {
        let g = self.op(format!("get {key}"))?;
        Ok(g.kv.get(key).map(|e| Kv {
            key: key.to_owned(),
            value: e.value.clone(),
            mod_rev: e.mod_rev,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Kv>, RecordsError> {
        let g = self.op(format!("list {prefix}"))?;
        Ok(g.kv
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| Kv {
                key: k.clone(),
                value: e.value.clone(),
                mod_rev: e.mod_rev,
            })
            .collect())
    }

    fn txn(&self, when: &[Cmp], then: &[Op]) -> Result<bool, RecordsError> {
        let mut g = self.op("txn".into())?;
        if !when.iter().all(|c| g.holds(c)) {
            g.ops.push("txn failed".into());
            return Ok(false);
        }
        g.rev += 1;
        let rev = g.rev;
        for op in then {
            match op {
                Op::Put { key, value, lease } => {
                    if let Some(l) = lease
                        && !g.leases.contains_key(l)
                    {
                        return Err(RecordsError::Unavailable(format!("lease {l} not found")));
                    }
                    g.kv.insert(
                        key.clone(),
                        Entry {
                            value: value.clone(),
                            mod_rev: rev,
                            lease: *lease,
                        },
                    );
                }
                Op::Delete(key) => {
                    g.kv.remove(key);
                }
            }
        }
        Ok(true)
    }

    fn grant(&self, ttl: Duration) -> Result<i64, RecordsError> {
        let mut g = self.op("grant".into())?;
        g.next_lease += 1;
        let id = g.next_lease;
        g.leases.insert(id, (Instant::now() + ttl, ttl));
        Ok(id)
    }

    fn keep_alive(&self, lease: i64) -> Result<(), RecordsError> {
        let mut g = self.op("keep_alive".into())?;
        match g.leases.get_mut(&lease) {
            Some((at, ttl)) => {
                *at = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(RecordsError::Unavailable(format!("lease {lease} expired"))),
        }
    }

    fn revoke(&self, lease: i64) -> Result<(), RecordsError> {
        let mut g = self.op("revoke".into())?;
        g.drop_lease(lease);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: k.into(),
            value: v.into(),
            lease: None,
        }
    }

    #[test]
    fn compares_revisions_prefixes_and_leases() {
        let m = MemoryRecords::new();
        assert!(m.txn(&[Cmp::Absent("a".into())], &[put("a", "1")]).unwrap());
        assert!(!m.txn(&[Cmp::Absent("a".into())], &[put("a", "2")]).unwrap());
        let r = m.get("a").unwrap().unwrap().mod_rev;
        assert!(
            m.txn(&[Cmp::ModRev("a".into(), r)], &[put("a", "3")])
                .unwrap()
        );
        assert!(
            !m.txn(&[Cmp::ModRev("a".into(), r)], &[put("a", "4")])
                .unwrap()
        );
        assert!(
            m.txn(&[Cmp::PrefixEmpty("p/".into())], &[put("p/x", "")])
                .unwrap()
        );
        assert!(!m.txn(&[Cmp::PrefixEmpty("p/".into())], &[]).unwrap());
        let l = m.grant(Duration::from_secs(60)).unwrap();
        m.txn(
            &[],
            &[Op::Put {
                key: "c".into(),
                value: "o".into(),
                lease: Some(l),
            }],
        )
        .unwrap();
        assert!(
            m.txn(&[Cmp::Value("c".into(), b"o".to_vec())], &[])
                .unwrap()
        );
        m.expire_all_leases();
        assert!(m.get("c").unwrap().is_none());
        assert_eq!(m.list("p/").unwrap().len(), 1);
        assert!(m.ops().iter().any(|o| o == "txn failed"));
    }
}
