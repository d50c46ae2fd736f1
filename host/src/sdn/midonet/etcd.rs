//! [`TopologyRecords`] on etcd v3: keys under `<etcd.prefix>/midonet/`,
//! transactions with revision compares, leases for claims, on the exec's
//! one etcd connection ([`crate::etcd::EtcdConn`], shared with the address
//! store): TLS and authentication from `[etcd]`, failover between members,
//! every operation bounded by `etcd.timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};

use super::records::{Cmp, Kv, Op, RecordsError, TopologyRecords};
use crate::etcd::{EtcdConn, EtcdError};

/// The etcd store.
pub struct EtcdRecords {
    conn: Arc<EtcdConn>,
    root: String,
}

impl From<EtcdError> for RecordsError {
    fn from(e: EtcdError) -> Self {
        RecordsError::Unavailable(e.message().to_owned())
    }
}

impl EtcdRecords {
    /// The records under `<prefix>/midonet/`, on `conn`. Nothing is
    /// contacted until the first operation.
    pub fn new(conn: Arc<EtcdConn>, prefix: &str) -> Self {
        let root = format!("{}/midonet/", prefix.trim_end_matches('/'));
        Self { conn, root }
    }

    /// The key prefix everything lives under (`<prefix>/midonet/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.root)
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Kv {
        let key = String::from_utf8_lossy(kv.key());
        Kv {
            key: key.strip_prefix(&self.root).unwrap_or(&key).to_owned(),
            value: kv.value().to_vec(),
            mod_rev: kv.mod_revision(),
        }
    }
}

impl TopologyRecords for EtcdRecords {
    fn get(&self, key: &str) -> Result<Option<Kv>, RecordsError> {
        let full = self.full(key);
        let r = self
            .conn
            .run("reading a topology record", |op| async move {
                op.get(&full, None).await
            })?;
        Ok(r.kvs().first().map(|kv| self.kv(kv)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Kv>, RecordsError> {
        let full = self.full(prefix);
        let r = self.conn.run("listing topology records", |op| async move {
            op.get(&full, Some(GetOptions::new().with_prefix())).await
        })?;
        Ok(r.kvs().iter().map(|kv| self.kv(kv)).collect())
    }

    fn txn(&self, when: &[Cmp], then: &[Op]) -> Result<bool, RecordsError> {
        let cmps: Vec<Compare> = when
            .iter()
            .map(|c| match c {
                Cmp::Absent(k) => Compare::create_revision(self.full(k), CompareOp::Equal, 0),
                Cmp::ModRev(k, r) => Compare::mod_revision(self.full(k), CompareOp::Equal, *r),
                Cmp::Value(k, v) => Compare::value(self.full(k), CompareOp::Equal, v.clone()),
                // etcd compares an empty range as one absent key, so
                // "create_revision == 0 over the prefix" holds iff no key
                // has the prefix.
                Cmp::PrefixEmpty(p) => {
                    Compare::create_revision(self.full(p), CompareOp::Equal, 0).with_prefix()
                }
            })
            .collect();
        let ops: Vec<TxnOp> = then
            .iter()
            .map(|o| match o {
                Op::Put { key, value, lease } => TxnOp::put(
                    self.full(key),
                    value.clone(),
                    lease.map(|l| PutOptions::new().with_lease(l)),
                ),
                Op::Delete(k) => TxnOp::delete(self.full(k), None),
            })
            .collect();
        let txn = Txn::new().when(cmps).and_then(ops);
        Ok(self.conn.run("writing topology records", |op| async move {
            if op.txn(&txn).await?.succeeded() {
                return Ok(true);
            }
            if !op.uncertain() {
                return Ok(false);
            }
            // An answer got lost and the retry's compare failed: maybe
            // on this transaction's own first application. Read back:
            // it was applied if every key holds what it wrote (values
            // carry fresh ids and owner tokens) and every deleted key
            // is gone.
            let gets: Vec<TxnOp> = then
                .iter()
                .map(|o| match o {
                    Op::Put { key, .. } | Op::Delete(key) => TxnOp::get(self.full(key), None),
                })
                .collect();
            let back = op.txn(&Txn::new().and_then(gets)).await?;
            let applied = then.iter().zip(back.op_responses()).all(|(o, r)| {
                let TxnOpResponse::Get(g) = r else {
                    return false;
                };
                match (o, g.kvs().first()) {
                    (Op::Put { value, lease, .. }, Some(kv)) => {
                        kv.value() == value.as_slice() && kv.lease() == lease.unwrap_or(0)
                    }
                    (Op::Delete(_), None) => true,
                    _ => false,
                }
            });
            Ok::<bool, EtcdError>(applied)
        })?)
    }

    fn grant(&self, ttl: Duration) -> Result<i64, RecordsError> {
        Ok(self.conn.run(
            "granting a claim lease",
            |op| async move { op.grant(ttl).await },
        )?)
    }

    fn keep_alive(&self, lease: i64) -> Result<(), RecordsError> {
        let ttl = self.conn.run("renewing a claim lease", |op| async move {
            op.keep_alive(lease).await
        })?;
        if ttl > 0 {
            Ok(())
        } else {
            Err(RecordsError::Unavailable(format!(
                "etcd lease {lease:x} expired"
            )))
        }
    }

    fn revoke(&self, lease: i64) -> Result<(), RecordsError> {
        // An expired lease is as good as revoked (`Op::revoke`).
        Ok(self.conn.run("revoking a claim lease", |op| async move {
            op.revoke(lease).await
        })?)
    }
}
