//! The store's side of the shared etcd connection ([`crate::etcd`]): one
//! operation at a time, the reads and guarded writes `reserve`, `confirm`
//! and `release` are made of, and the mapping of connection errors onto
//! [`IpamError`]. Failover between members, deadlines and retries are the
//! connection's ([`crate::etcd::Op`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};

use crate::etcd::{EtcdConn, EtcdError, Op};
use crate::ipam::IpamError;

impl From<EtcdError> for IpamError {
    fn from(e: EtcdError) -> Self {
        match e {
            EtcdError::Unavailable(detail) => IpamError::Unavailable { detail },
            EtcdError::Refused(m) => IpamError::io("etcd refused", std::io::Error::other(m)),
            EtcdError::LeaseNotFound(detail) => IpamError::LeaseLost { detail },
            EtcdError::Config(reason) => IpamError::InvalidRequest { reason },
        }
    }
}

/// The store's connection (possibly shared with the MidoNet records).
pub(super) struct Conn {
    inner: Arc<EtcdConn>,
}

impl Conn {
    pub fn new(inner: Arc<EtcdConn>) -> Self {
        Conn { inner }
    }

    pub fn shared(&self) -> &Arc<EtcdConn> {
        &self.inner
    }

    /// Runs one store operation to completion, bounded by the timeout as a
    /// whole (failover and retries included).
    pub fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, IpamError>
    where
        F: FnOnce(Etcd) -> Fut,
        Fut: Future<Output = Result<T, IpamError>>,
    {
        self.inner.run(what, |op| f(Etcd { op }))
    }
}

/// One operation's handle on etcd.
pub(super) struct Etcd {
    op: Op,
}

/// The results of a read-only transaction, one list of pairs per op.
pub(super) type Reads = Vec<Vec<KeyValue>>;

/// The outcome of [`Etcd::write_or_read`].
pub(super) enum Written {
    /// Committed at this revision.
    Done(i64),
    /// A compare failed; nothing was written; the failure branch's reads.
    Lost(Reads),
}

fn gets(ops: &[(String, bool)]) -> Vec<TxnOp> {
    ops.iter()
        .map(|(k, prefix)| TxnOp::get(k.as_str(), prefix.then(|| GetOptions::new().with_prefix())))
        .collect()
}

fn take_reads(resp: TxnResponse) -> Reads {
    resp.op_responses()
        .into_iter()
        .map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs(),
            _ => Vec::new(),
        })
        .collect()
}

impl Etcd {
    /// True once a request of this operation may have been applied without
    /// its answer arriving (see [`Op::uncertain`]).
    pub fn uncertain(&self) -> bool {
        self.op.uncertain()
    }

    /// Reads every op's keys at one revision: gets of single keys or
    /// prefixes, in one round trip.
    pub async fn read(&self, ops: Vec<(String, bool)>) -> Result<Reads, IpamError> {
        let resp = self.txn(Txn::new().and_then(gets(&ops))).await?;
        Ok(take_reads(resp))
    }

    /// A write transaction (`compares` → `ops`) whose failure branch reads
    /// `reads` like [`Etcd::read`]: a lost compare comes back with the fresh
    /// values in the same round trip.
    pub async fn write_or_read(
        &self,
        compares: Vec<Compare>,
        ops: Vec<TxnOp>,
        reads: &[(String, bool)],
    ) -> Result<Written, IpamError> {
        let txn = Txn::new().when(compares).and_then(ops).or_else(gets(reads));
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Written::Done(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        Ok(Written::Lost(take_reads(resp)))
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, IpamError> {
        Ok(self.op.txn(&txn).await?)
    }

    /// A prefix scan (values or keys only).
    pub async fn scan(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>, IpamError> {
        let mut o = GetOptions::new().with_prefix();
        if keys_only {
            o = o.with_keys_only();
        }
        Ok(self.op.get(prefix, Some(o)).await?.take_kvs())
    }

    pub async fn grant(&self, ttl: Duration) -> Result<i64, IpamError> {
        Ok(self.op.grant(ttl).await?)
    }

    /// Sleeps, but never past the deadline.
    pub async fn backoff(&self, d: Duration) {
        self.op.sleep(d).await;
    }
}
