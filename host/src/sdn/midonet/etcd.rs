//! [`TopologyRecords`] on etcd v3: keys under `<etcd.prefix>/midonet/`,
//! transactions with revision compares, leases for claims. Every operation
//! is bounded by `etcd.timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};

use super::records::{Cmp, Kv, Op, RecordsError, TopologyRecords};
use crate::config::EtcdConfig;

/// The etcd store.
pub struct EtcdRecords {
    client: Client,
    root: String,
    timeout: Duration,
    rt: Arc<tokio::runtime::Runtime>,
}

fn unavailable(e: impl std::fmt::Display) -> RecordsError {
    RecordsError::Unavailable(format!("etcd: {e}"))
}

impl EtcdRecords {
    /// Connects (bounded by `timeout_ms`). `rt` drives every operation.
    pub fn connect(
        cfg: &EtcdConfig,
        rt: Arc<tokio::runtime::Runtime>,
    ) -> Result<Self, RecordsError> {
        if cfg.endpoints.is_empty() {
            return Err(RecordsError::Unavailable("etcd.endpoints is empty".into()));
        }
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() || cfg.key_file.is_some() {
            return Err(RecordsError::Unavailable(
                "etcd.ca_file/cert_file/key_file: TLS is not supported by the MidoNet records store of this build"
                    .into(),
            ));
        }
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let mut opts = ConnectOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout);
        if let Some(user) = &cfg.username {
            let pw = match &cfg.password_file {
                Some(p) => std::fs::read_to_string(p)
                    .map_err(|e| {
                        RecordsError::Unavailable(format!(
                            "etcd.password_file {}: {e}",
                            p.display()
                        ))
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
                None => String::new(),
            };
            opts = opts.with_user(user.clone(), pw);
        }
        let endpoints = cfg.endpoints.clone();
        let client = rt
            .block_on(async {
                tokio::time::timeout(timeout, Client::connect(endpoints, Some(opts))).await
            })
            .map_err(|_| unavailable(format!("connect timed out after {timeout:?}")))?
            .map_err(unavailable)?;
        let root = format!("{}/midonet/", cfg.prefix.trim_end_matches('/'));
        Ok(Self {
            client,
            root,
            timeout,
            rt,
        })
    }

    /// The key prefix everything lives under (`<prefix>/midonet/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    fn run<T, F>(&self, f: F) -> Result<T, RecordsError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.rt
            .block_on(async { tokio::time::timeout(self.timeout, f).await })
            .map_err(|_| unavailable(format!("timed out after {:?}", self.timeout)))?
            .map_err(unavailable)
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
        let mut c = self.client.clone();
        let full = self.full(key);
        let r = self.run(async move { c.get(full, None).await })?;
        Ok(r.kvs().first().map(|kv| self.kv(kv)))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Kv>, RecordsError> {
        let mut c = self.client.clone();
        let full = self.full(prefix);
        let r =
            self.run(async move { c.get(full, Some(GetOptions::new().with_prefix())).await })?;
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
        let mut c = self.client.clone();
        let r = self.run(async move { c.txn(Txn::new().when(cmps).and_then(ops)).await })?;
        Ok(r.succeeded())
    }

    fn grant(&self, ttl: Duration) -> Result<i64, RecordsError> {
        let secs = ttl.as_secs_f64().ceil().max(1.0) as i64;
        let mut c = self.client.clone();
        let r = self.run(async move { c.lease_grant(secs, None).await })?;
        Ok(r.id())
    }

    fn keep_alive(&self, lease: i64) -> Result<(), RecordsError> {
        let mut c = self.client.clone();
        let r = self.run(async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            stream.message().await
        })?;
        match r {
            Some(resp) if resp.ttl() > 0 => Ok(()),
            _ => Err(RecordsError::Unavailable(format!(
                "etcd lease {lease:x} expired"
            ))),
        }
    }

    fn revoke(&self, lease: i64) -> Result<(), RecordsError> {
        let mut c = self.client.clone();
        match self.run(async move { c.lease_revoke(lease).await }) {
            Ok(_) => Ok(()),
            // An expired lease is as good as revoked.
            Err(RecordsError::Unavailable(m)) if m.contains("not found") => Ok(()),
            Err(e) => Err(e),
        }
    }
}
