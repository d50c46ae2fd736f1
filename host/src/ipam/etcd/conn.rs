//! The store's connection: its own current-thread tokio runtime, the etcd
//! client, deadlines, and the mapping of client errors onto [`IpamError`].

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, ConnectOptions, GetOptions, Identity, KeyValue, KvClient,
    LeaseClient, TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use super::EtcdOptions;
use crate::ipam::IpamError;

/// A connected client and the runtime it lives on.
pub(super) struct Conn {
    rt: Runtime,
    client: Client,
    timeout: Duration,
    endpoints: String,
}

/// Client errors that mean "etcd did not answer" (down, no leader, network),
/// as opposed to etcd answering with a refusal.
fn is_unavailable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // gRPC codes: 1 cancelled, 2 unknown, 4 deadline exceeded, 8
        // resource exhausted, 10 aborted, 14 unavailable (etcd's "no
        // leader", "leader changed", "request timed out" come as these).
        etcd_client::Error::GRpcStatus(s) => matches!(i32::from(s.code()), 1 | 2 | 4 | 8 | 10 | 14),
        _ => false,
    }
}

impl Conn {
    pub fn connect(o: &EtcdOptions) -> Result<Self, IpamError> {
        let endpoints = o.endpoints.join(",");
        if o.endpoints.is_empty() {
            return Err(IpamError::InvalidRequest {
                reason: "etcd.endpoints is empty".into(),
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| IpamError::io("starting the etcd client runtime", e))?;
        // No per-request `with_timeout`: `run` bounds each whole operation
        // already, and a gRPC deadline on every call costs a timer on both
        // sides (~7 % of the raw transaction rate here).
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(o.timeout)
            // Fail fast while the cluster has no leader instead of waiting:
            // the caller gets code 11 and retries.
            .with_require_leader(true);
        if let Some((user, password)) = &o.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if let Some(tls) = &o.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_pem, &tls.key_pem) {
                t = t.identity(Identity::from_pem(cert, key));
            }
            opts = opts.with_tls(t);
        }
        let timeout = o.timeout;
        let eps = o.endpoints.clone();
        let client = rt
            .block_on(async {
                tokio::time::timeout(timeout, Client::connect(eps, Some(opts))).await
            })
            .map_err(|_| IpamError::Unavailable {
                detail: format!("etcd {endpoints}: no connection within {timeout:?}"),
            })?
            .map_err(|e| map_err(&endpoints, "connecting", e))?;
        Ok(Conn {
            rt,
            client,
            timeout,
            endpoints,
        })
    }

    /// Runs one store operation to completion, bounded by the timeout as a
    /// whole (retries included).
    pub fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T, IpamError>
    where
        F: FnOnce(Etcd) -> Fut,
        Fut: Future<Output = Result<T, IpamError>>,
    {
        let etcd = Etcd {
            kv: self.client.kv_client(),
            lease: self.client.lease_client(),
            endpoints: self.endpoints.clone(),
            deadline: Instant::now() + self.timeout,
        };
        let timeout = self.timeout;
        let endpoints = &self.endpoints;
        self.rt
            .block_on(async { tokio::time::timeout(timeout, f(etcd)).await })
            .map_err(|_| IpamError::Unavailable {
                detail: format!("etcd {endpoints}: {what} got no answer within {timeout:?}"),
            })?
    }
}

pub(super) fn map_err(endpoints: &str, what: &str, e: etcd_client::Error) -> IpamError {
    if is_unavailable(&e) {
        IpamError::Unavailable {
            detail: format!("etcd {endpoints}: {what}: {e}"),
        }
    } else {
        IpamError::io(
            format!("etcd {endpoints}: {what}"),
            std::io::Error::other(e.to_string()),
        )
    }
}

/// A handle for one operation: the clients it uses and the operation's
/// deadline. Only the KV and lease clients: cloning (and dropping) the
/// whole `Client`, eight gRPC clients, per operation showed in the
/// client CPU per reserve.
#[derive(Clone)]
pub(super) struct Etcd {
    kv: KvClient,
    lease: LeaseClient,
    endpoints: String,
    pub deadline: Instant,
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

impl Etcd {
    fn err(&self, what: &str, e: etcd_client::Error) -> IpamError {
        map_err(&self.endpoints, what, e)
    }

    /// Reads every op's keys at one revision: gets of single keys or
    /// prefixes, in one round trip.
    pub async fn read(&self, ops: Vec<(String, bool)>) -> Result<Reads, IpamError> {
        let txn = Txn::new().and_then(
            ops.into_iter()
                .map(|(k, prefix)| TxnOp::get(k, prefix.then(|| GetOptions::new().with_prefix())))
                .collect::<Vec<_>>(),
        );
        let resp = self.txn(txn).await?;
        Ok(resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(mut g) => g.take_kvs(),
                _ => Vec::new(),
            })
            .collect())
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
        let txn = Txn::new().when(compares).and_then(ops).or_else(
            reads
                .iter()
                .map(|(k, prefix)| {
                    TxnOp::get(k.as_str(), prefix.then(|| GetOptions::new().with_prefix()))
                })
                .collect::<Vec<_>>(),
        );
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            return Ok(Written::Done(
                resp.header().map(|h| h.revision()).unwrap_or_default(),
            ));
        }
        Ok(Written::Lost(
            resp.op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(mut g) => g.take_kvs(),
                    _ => Vec::new(),
                })
                .collect(),
        ))
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, IpamError> {
        let mut kv = self.kv.clone();
        kv.txn(txn).await.map_err(|e| self.err("transaction", e))
    }

    /// A prefix scan (values or keys only).
    pub async fn scan(&self, prefix: &str, keys_only: bool) -> Result<Vec<KeyValue>, IpamError> {
        let mut kv = self.kv.clone();
        let mut o = GetOptions::new().with_prefix();
        if keys_only {
            o = o.with_keys_only();
        }
        let mut r = kv
            .get(prefix, Some(o))
            .await
            .map_err(|e| self.err("reading", e))?;
        Ok(r.take_kvs())
    }

    pub async fn grant(&self, ttl: Duration) -> Result<i64, IpamError> {
        let mut lease = self.lease.clone();
        let ttl = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        lease
            .grant(ttl, None)
            .await
            .map(|r| r.id())
            .map_err(|e| self.err("granting a claim lease", e))
    }

    /// Sleeps, but never past the deadline.
    pub async fn backoff(&self, d: Duration) {
        tokio::time::sleep_until((Instant::now() + d).min(self.deadline)).await;
    }
}
