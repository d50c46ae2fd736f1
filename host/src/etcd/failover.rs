//! One operation's requests, each sent to one member and moved to the next
//! when that member fails (see "Failover between members" in the module
//! docs).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{GetOptions, GetResponse, Txn, TxnResponse};
use tokio::time::Instant;

use super::member::Clients;
use super::{EtcdConn, EtcdError};

/// What to do after a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The member did not serve it (down, cut off, in an election, no
    /// answer): the next member gets it.
    Retry,
    /// The member's auth token expired: authenticate again, same member.
    Reauth,
    /// The cluster cannot serve it at all (out of space): no member will.
    Unavailable,
    /// A refusal that every member would repeat.
    Refused,
    /// gRPC `NotFound`: the lease the request names is gone.
    LeaseNotFound,
}

fn classify(e: &etcd_client::Error) -> Class {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => Class::Retry,
        etcd_client::Error::GRpcStatus(s) => classify_status(i32::from(s.code()), s.message()),
        // Bad URLs, TLS options on an http:// URL, …: configuration.
        _ => Class::Refused,
    }
}

/// [`classify`] for a gRPC status (code, etcd's message).
fn classify_status(code: i32, message: &str) -> Class {
    match code {
        // Unauthenticated: "etcdserver: invalid auth token".
        16 => Class::Reauth,
        // ResourceExhausted: "too many requests" passes, "database space
        // exceeded" (the NOSPACE alarm) does not.
        8 if message.contains("too many requests") => Class::Retry,
        8 => Class::Unavailable,
        // Cancelled, Unknown (transport trouble), DeadlineExceeded, Aborted,
        // Unavailable (etcd's "no leader", "leader changed", "request timed
        // out", "server stopped", a refused or reset connection).
        1 | 2 | 4 | 10 | 14 => Class::Retry,
        // FailedPrecondition "etcdserver: not leader".
        9 if message.contains("not leader") => Class::Retry,
        // NotFound: of etcd's NotFound statuses only "requested lease not
        // found" answers the KV and lease requests tenet sends (the others
        // are the cluster, auth and member APIs').
        5 => Class::LeaseNotFound,
        _ => Class::Refused,
    }
}

/// Whether the request surely never reached etcd's state machine: the
/// connection was refused, or the member refused it for want of a leader
/// before proposing it. Anything else (no answer, a reset connection, an
/// election that ended the wait) may have been applied.
fn surely_not_applied(e: &etcd_client::Error) -> bool {
    let reauth = matches!(e, etcd_client::Error::GRpcStatus(s) if i32::from(s.code()) == 16);
    reauth || refused_before_applying(&describe(e))
}

/// [`surely_not_applied`] from the error's description.
fn refused_before_applying(text: &str) -> bool {
    text.contains("no leader") || text.to_ascii_lowercase().contains("connection refused")
}

/// A short description: the gRPC code and etcd's message, or the transport
/// error with its causes (not the debug dump of the whole status).
pub(super) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        etcd_client::Error::TransportError(t) => {
            let mut out = format!("transport error: {t}");
            let mut src = std::error::Error::source(t);
            while let Some(s) = src {
                out.push_str(&format!(": {s}"));
                src = s.source();
            }
            out
        }
        other => other.to_string(),
    }
}

/// One operation: its deadline, and whether an answer got lost on the way.
/// Every request goes through [`Op::call`].
pub struct Op {
    conn: Arc<EtcdConn>,
    deadline: Instant,
    /// The operation, for messages ("reserving").
    what: &'static str,
    uncertain: AtomicBool,
}

impl Op {
    pub(super) fn new(conn: Arc<EtcdConn>, deadline: Instant, what: &'static str) -> Self {
        Op {
            conn,
            deadline,
            what,
            uncertain: AtomicBool::new(false),
        }
    }

    /// When the operation gives up.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The connection.
    pub fn conn(&self) -> &EtcdConn {
        &self.conn
    }

    /// True once a request of this operation was sent and its answer lost
    /// (no answer in time, a reset connection, an election): it may have
    /// been applied. A retried transaction whose compare then fails may be
    /// failing on its own first application; callers read back.
    pub fn uncertain(&self) -> bool {
        self.uncertain.load(Ordering::Relaxed)
    }

    /// Sleeps, but never past the deadline.
    pub async fn sleep(&self, d: Duration) {
        tokio::time::sleep_until((Instant::now() + d).min(self.deadline)).await;
    }

    /// Sends one request, built by `f` from a member's clients, to the
    /// member that answered last, then to the others in turn until one
    /// answers or the deadline passes (see the module docs). `what` names
    /// the request in errors.
    pub(super) async fn call<R, F, Fut>(&self, what: &str, mut f: F) -> Result<R, EtcdError>
    where
        F: FnMut(Arc<Clients>) -> Fut,
        Fut: Future<Output = Result<R, etcd_client::Error>>,
    {
        let c = &*self.conn;
        let n = c.members.len();
        let start = c.first.load(Ordering::Relaxed) % n;
        // What each member last said, for the error; allocated on failure.
        let mut failed: Vec<Option<String>> = Vec::new();
        let mut reauthed = vec![false; 0];
        let mut tries = 0usize;
        loop {
            let i = (start + tries) % n;
            let now = Instant::now();
            if now >= self.deadline {
                let seen: Vec<String> = failed
                    .iter()
                    .zip(&c.members)
                    .filter_map(|(f, m)| f.as_ref().map(|f| format!("{}: {f}", m.url())))
                    .collect();
                return Err(EtcdError::Unavailable(format!(
                    "etcd {}: {}: {what}: no answer within {:?} ({tries} attempts){}{}",
                    c.endpoints,
                    self.what,
                    c.timeout,
                    if seen.is_empty() { "" } else { ": " },
                    seen.join("; ")
                )));
            }
            let member = &c.members[i];
            let until = (now + c.attempt).min(self.deadline);
            let attempt = async {
                let clients = member.clients().await?;
                f(clients).await
            };
            let why = match tokio::time::timeout_at(until, attempt).await {
                Ok(Ok(r)) => {
                    c.answered(i);
                    return Ok(r);
                }
                Ok(Err(e)) => match classify(&e) {
                    Class::LeaseNotFound => {
                        return Err(EtcdError::LeaseNotFound(format!(
                            "etcd {}: {}: {what}: {}",
                            member.url(),
                            self.what,
                            describe(&e)
                        )));
                    }
                    Class::Refused => {
                        return Err(EtcdError::Refused(format!(
                            "etcd {}: {}: {what}: {}",
                            member.url(),
                            self.what,
                            describe(&e)
                        )));
                    }
                    Class::Unavailable => {
                        return Err(EtcdError::Unavailable(format!(
                            "etcd {}: {}: {what}: {}",
                            member.url(),
                            self.what,
                            describe(&e)
                        )));
                    }
                    Class::Reauth if !reauthed.get(i).copied().unwrap_or(false) => {
                        // Same member again, once, with a new token.
                        reauthed.resize(n, false);
                        reauthed[i] = true;
                        member.reconnect();
                        continue;
                    }
                    Class::Reauth | Class::Retry => {
                        if !surely_not_applied(&e) {
                            self.uncertain.store(true, Ordering::Relaxed);
                        }
                        describe(&e)
                    }
                },
                Err(_) => {
                    self.uncertain.store(true, Ordering::Relaxed);
                    format!("no answer within {:?}", until - now)
                }
            };
            tracing::debug!(member = member.url(), what, error = %why, "etcd request failed; next member");
            failed.resize(n, None);
            failed[i] = Some(why);
            tries += 1;
            c.failovers.fetch_add(1, Ordering::Relaxed);
            if tries.is_multiple_of(n) {
                // Every member failed once: an election is the usual
                // cause; wait a little (25 ms, doubling to 250 ms).
                let round = (tries / n).min(5) as u32;
                self.sleep(Duration::from_millis((25u64 << (round - 1)).min(250)))
                    .await;
            }
        }
    }

    /// A transaction.
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResponse, EtcdError> {
        self.call("transaction", |c| {
            let mut kv = c.kv.clone();
            let t = txn.clone();
            async move { kv.txn(t).await }
        })
        .await
    }

    /// A range read (linearizable).
    pub async fn get(&self, key: &str, opts: Option<GetOptions>) -> Result<GetResponse, EtcdError> {
        self.call("reading", |c| {
            let mut kv = c.kv.clone();
            let (k, o) = (key.to_owned(), opts.clone());
            async move { kv.get(k, o).await }
        })
        .await
    }

    /// A new lease of `ttl` (whole seconds, at least one). A grant whose
    /// answer was lost leaves an unused lease that expires.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let secs = i64::try_from(ttl.as_secs_f64().ceil().max(1.0) as u64).unwrap_or(i64::MAX);
        self.call("granting a lease", |c| {
            let mut l = c.lease.clone();
            async move { l.grant(secs, None).await.map(|r| r.id()) }
        })
        .await
    }

    /// Ends a lease now; an unknown (expired) lease is as good as revoked.
    pub async fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        match self
            .call("revoking a lease", |c| {
                let mut l = c.lease.clone();
                async move { l.revoke(lease).await.map(drop) }
            })
            .await
        {
            Err(EtcdError::LeaseNotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// Renews a lease once; its remaining TTL in seconds (0: it expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<i64, EtcdError> {
        self.call("renewing a lease", |c| {
            let mut l = c.lease.clone();
            async move {
                let (mut keeper, mut stream) = l.keep_alive(lease).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_what_another_member_would_do() {
        assert_eq!(classify_status(14, "etcdserver: no leader"), Class::Retry);
        assert_eq!(
            classify_status(14, "etcdserver: request timed out"),
            Class::Retry
        );
        assert_eq!(classify_status(4, "deadline"), Class::Retry);
        assert_eq!(
            classify_status(16, "etcdserver: invalid auth token"),
            Class::Reauth
        );
        assert_eq!(
            classify_status(8, "etcdserver: too many requests"),
            Class::Retry
        );
        assert_eq!(
            classify_status(8, "etcdserver: mvcc: database space exceeded"),
            Class::Unavailable
        );
        assert_eq!(
            classify_status(7, "etcdserver: permission denied"),
            Class::Refused
        );
        assert_eq!(
            classify_status(5, "etcdserver: requested lease not found"),
            Class::LeaseNotFound
        );
        assert_eq!(
            classify(&etcd_client::Error::InvalidArgs("TLS".into())),
            Class::Refused
        );
        assert!(refused_before_applying(
            "Unavailable: etcdserver: no leader"
        ));
        assert!(refused_before_applying(
            "transport error: tcp connect error: Connection refused (os error 111)"
        ));
        assert!(!refused_before_applying(
            "Unavailable: etcdserver: request timed out"
        ));
        assert!(!refused_before_applying("no answer within 1.25s"));
    }
}
