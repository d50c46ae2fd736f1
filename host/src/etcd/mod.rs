//! The connection to the etcd cluster: one per `tenet` exec, shared by the
//! address store ([`crate::ipam::EtcdStore`]) and MidoNet's topology
//! records (`sdn::midonet::etcd`), with TLS and authentication for both.
//!
//! # Failover between members
//!
//! The `etcd-client` crate balances one channel over all endpoints and
//! returns a connection error from a dead endpoint at once, without trying
//! the others: with one member of three down, most operations failed
//! although the cluster had quorum (issue 13). So [`EtcdConn`] keeps **one
//! client per endpoint** (member), connected on first use, and runs every
//! request through [`Op::call`]:
//!
//! - The request goes to the member that answered last (in this process,
//!   or in the node's previous exec: `<state_dir>/etcd-member`, rewritten
//!   only when it changes; without it, a member picked from the node name,
//!   so nodes spread over the members). The common case is one round trip.
//! - A member that refuses the connection, has no leader (`require_leader`:
//!   a member cut off from the others answers nothing useful), is in an
//!   election ("leader changed", "request timed out") or gives no answer
//!   within one **attempt budget** (a quarter of the operation's timeout,
//!   at least 100 ms: a partitioned member or a follower whose leader just
//!   died can hold a request for seconds) loses the request to the next
//!   member, and so on round the list, with a short backoff after each
//!   full round (an election takes about one election timeout), until the
//!   operation's deadline (`etcd.timeout_ms`, one bound for the whole
//!   operation, retries included).
//! - A refusal that another member would repeat (permission denied, lease
//!   not found, a bad request) is returned at once; an expired auth token
//!   reconnects that member (re-authenticates) once.
//!
//! Retrying a request whose answer was lost is safe only when etcd itself
//! refuses a second application: every write of tenet's stores is a
//! transaction whose compares fail if it was applied already (a handle that
//! must be absent, a revision that must be unchanged), and each caller reads
//! back what such a failure means ([`Op::uncertain`] says whether an answer
//! was lost in this operation). Granting a lease twice costs an unused lease
//! that expires.
//!
//! # Health
//!
//! [`EtcdConn::health`] asks every member for its status (a short deadline
//! each, concurrently) and then makes one linearizable read through the
//! failover path: a quorum answered (ready) or not (CNI STATUS code 50);
//! members that did not answer, or report no leader or alarms, make a
//! degraded but ready cluster.

mod failover;
mod health;
mod member;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use tokio::runtime::Runtime;
use tokio::time::Instant;

use crate::config::Config;

pub use failover::Op;
pub use health::{ClusterHealth, MemberHealth, MemberState};

use member::Member;

/// TLS material for the connection to etcd (PEM bytes).
#[derive(Clone, Default)]
pub struct EtcdTls {
    /// CA bundle that signed the servers' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate, for mutual TLS.
    pub cert_pem: Option<Vec<u8>>,
    /// Client key, for mutual TLS.
    pub key_pem: Option<Vec<u8>>,
}

/// How to reach the cluster.
#[derive(Clone)]
pub struct EtcdSettings {
    /// Client URLs, one per member.
    pub endpoints: Vec<String>,
    /// Bound on any one operation, failover and retries included.
    pub timeout: Duration,
    /// User name and password for etcd authentication.
    pub user: Option<(String, String)>,
    /// TLS to etcd.
    pub tls: Option<EtcdTls>,
    /// Where the member that answered last is remembered between execs
    /// (`<state_dir>/etcd-member`); `None`: not remembered.
    pub member_file: Option<PathBuf>,
    /// Picks the first member to try when none is remembered (the node
    /// name), so that nodes spread over the members.
    pub spread: String,
}

impl std::fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints the password or key material.
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .field("user", &self.user.as_ref().map(|u| &u.0))
            .field("tls", &self.tls.is_some())
            .field("member_file", &self.member_file)
            .finish_non_exhaustive()
    }
}

impl EtcdSettings {
    /// Plain settings for these endpoints (no TLS, no user, nothing
    /// remembered).
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        EtcdSettings {
            endpoints,
            timeout,
            user: None,
            tls: None,
            member_file: None,
            spread: String::new(),
        }
    }

    /// From the host configuration's `[etcd]` section and `state_dir`.
    /// Reads the password and TLS files; errors name the configuration key.
    pub fn from_config(cfg: &Config) -> Result<Self, EtcdError> {
        let e = &cfg.etcd;
        let read = |key: &str, p: &Path| {
            std::fs::read(p)
                .map_err(|err| EtcdError::Config(format!("etcd.{key}: {}: {err}", p.display())))
        };
        let user = match (&e.username, &e.password_file) {
            (Some(u), Some(p)) => {
                let pw = String::from_utf8(read("password_file", p)?).map_err(|_| {
                    EtcdError::Config(format!("etcd.password_file: {} is not UTF-8", p.display()))
                })?;
                Some((u.clone(), pw.trim_end_matches(['\n', '\r']).to_owned()))
            }
            (Some(_), None) => {
                return Err(EtcdError::Config(
                    "etcd.username is set but etcd.password_file is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(EtcdError::Config(
                    "etcd.password_file is set but etcd.username is not".into(),
                ));
            }
            (None, None) => None,
        };
        if e.cert_file.is_some() != e.key_file.is_some() {
            return Err(EtcdError::Config(
                "etcd.cert_file and etcd.key_file must be set together".into(),
            ));
        }
        let tls = if e.ca_file.is_some() || e.cert_file.is_some() {
            let file =
                |key: &str, p: &Option<PathBuf>| p.as_deref().map(|p| read(key, p)).transpose();
            Some(EtcdTls {
                ca_pem: file("ca_file", &e.ca_file)?,
                cert_pem: file("cert_file", &e.cert_file)?,
                key_pem: file("key_file", &e.key_file)?,
            })
        } else {
            None
        };
        Ok(EtcdSettings {
            endpoints: e.endpoints.clone(),
            timeout: Duration::from_millis(e.timeout_ms.max(1)),
            user,
            tls,
            member_file: Some(cfg.state_dir.join("etcd-member")),
            spread: cfg.node_name.clone().unwrap_or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
            }),
        })
    }
}

/// Errors of the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No member answered in time, or the cluster cannot serve (no leader,
    /// no quorum, out of space): try again later.
    #[error("{0}")]
    Unavailable(String),
    /// etcd answered with a refusal that another member would repeat
    /// (permission denied, a bad request).
    #[error("{0}")]
    Refused(String),
    /// etcd answered gRPC `NotFound`: on the KV and lease requests tenet
    /// sends that is `ErrGRPCLeaseNotFound`, the lease named in the request
    /// is gone (expired or revoked). Told apart by the status code, not by
    /// etcd's message.
    #[error("{0}")]
    LeaseNotFound(String),
    /// The settings are unusable (no endpoints, an unreadable file); names
    /// the configuration key.
    #[error("{0}")]
    Config(String),
}

impl EtcdError {
    /// The message, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            EtcdError::Unavailable(m)
            | EtcdError::Refused(m)
            | EtcdError::LeaseNotFound(m)
            | EtcdError::Config(m) => m,
        }
    }
}

/// One connection to the cluster: a client per member, connected on first
/// use, and the runtime they live on (see the module docs).
pub struct EtcdConn {
    rt: Arc<Runtime>,
    members: Vec<Member>,
    /// The member a request goes to first: the one that answered last.
    first: AtomicUsize,
    /// The member remembered in `member_file` when this connection opened.
    remembered: Option<usize>,
    member_file: Option<PathBuf>,
    timeout: Duration,
    attempt: Duration,
    endpoints: String,
    /// Requests that went to another member after one failed.
    failovers: AtomicU64,
}

impl std::fmt::Debug for EtcdConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConn")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// FNV-1a: a stable spread of node names over members.
fn spread_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl EtcdConn {
    /// A connection on its own current-thread runtime. Nothing is contacted
    /// yet: each member is connected (and authenticated) on first use.
    pub fn open(s: &EtcdSettings) -> Result<Self, EtcdError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(EtcdError::Config(
                "the etcd connection must not be opened inside a tokio runtime".into(),
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| EtcdError::Config(format!("starting the etcd client runtime: {e}")))?;
        Self::with_runtime(s, Arc::new(rt))
    }

    /// A connection whose clients live on `rt` (a current-thread runtime
    /// that every caller drives with `block_on`).
    pub fn with_runtime(s: &EtcdSettings, rt: Arc<Runtime>) -> Result<Self, EtcdError> {
        if s.endpoints.is_empty() {
            return Err(EtcdError::Config("etcd.endpoints is empty".into()));
        }
        if let Some(bad) = s.endpoints.iter().find(|e| e.trim().is_empty()) {
            return Err(EtcdError::Config(format!(
                "etcd.endpoints holds an empty URL: {bad:?}"
            )));
        }
        let timeout = s.timeout.max(Duration::from_millis(1));
        // A quarter of the operation, so that a member that holds requests
        // (partitioned, or a follower whose leader just died) leaves time
        // for the others; at least 100 ms, so that a busy but healthy
        // member is not abandoned for nothing.
        let attempt = (timeout / 4).max(Duration::from_millis(100)).min(timeout);
        let opts = connect_options(s, attempt);
        let members: Vec<Member> = s
            .endpoints
            .iter()
            .map(|url| Member::new(url.trim(), opts.clone()))
            .collect();
        let remembered = s
            .member_file
            .as_deref()
            .and_then(|f| member::read_remembered(f, &s.endpoints));
        let first =
            remembered.unwrap_or_else(|| (spread_hash(&s.spread) % members.len() as u64) as usize);
        Ok(EtcdConn {
            rt,
            endpoints: s.endpoints.join(","),
            members,
            first: AtomicUsize::new(first),
            remembered,
            member_file: s.member_file.clone(),
            timeout,
            attempt,
            failovers: AtomicU64::new(0),
        })
    }

    /// The runtime every client of this connection lives on (MidoNet's API
    /// client shares it).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.rt
    }

    /// The endpoints, comma-separated (for messages).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// The bound on one operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many requests went to another member after one failed, since
    /// this connection opened (tests assert failover with it).
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// The member requests go to first (its URL).
    pub fn current_member(&self) -> &str {
        self.members[self.first.load(Ordering::Relaxed) % self.members.len()].url()
    }

    /// Runs one operation (`what`, for messages) to completion on this
    /// connection's runtime, bounded by the timeout as a whole, failover
    /// and retries included.
    pub fn run<T, E, F, Fut>(self: &Arc<Self>, what: &'static str, f: F) -> Result<T, E>
    where
        E: From<EtcdError>,
        F: FnOnce(Op) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let deadline = Instant::now() + self.timeout;
        let op = Op::new(Arc::clone(self), deadline, what);
        // Every request of `f` is bounded by the deadline already; this
        // catches anything else (a grace of 50 ms lets the requests' own,
        // more precise errors win).
        self.rt
            .block_on(async {
                tokio::time::timeout_at(deadline + Duration::from_millis(50), f(op)).await
            })
            .map_err(|_| {
                E::from(EtcdError::Unavailable(format!(
                    "etcd {}: {what}: no answer within {:?}",
                    self.endpoints, self.timeout
                )))
            })?
    }

    /// Records that member `i` answered: the next requests (and, through
    /// the member file, the node's next execs) go there first.
    fn answered(&self, i: usize) {
        if self.first.swap(i, Ordering::Relaxed) != i
            && self.remembered != Some(i)
            && let Some(f) = &self.member_file
        {
            member::remember(f, self.members[i].url());
        }
    }
}

fn connect_options(s: &EtcdSettings, attempt: Duration) -> ConnectOptions {
    // No per-request gRPC deadline (`with_timeout`): every request is
    // bounded here by its attempt budget, and a gRPC deadline costs a timer
    // on both sides (~7 % of the raw transaction rate).
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(attempt)
        // A member without a leader (cut off, or in an election) refuses
        // at once instead of holding the request: the request moves on.
        .with_require_leader(true);
    if let Some((user, password)) = &s.user {
        opts = opts.with_user(user.clone(), password.clone());
    }
    if let Some(tls) = &s.tls {
        let mut t = TlsOptions::new();
        if let Some(ca) = &tls.ca_pem {
            t = t.ca_certificate(Certificate::from_pem(ca));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_pem, &tls.key_pem) {
            t = t.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(t);
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_check_endpoints_and_spread_nodes() {
        let mut s = EtcdSettings::new(vec![], Duration::from_secs(1));
        assert!(matches!(EtcdConn::open(&s), Err(EtcdError::Config(m)) if m.contains("empty")));
        s.endpoints = vec!["http://a:1".into(), " ".into()];
        assert!(matches!(EtcdConn::open(&s), Err(EtcdError::Config(_))));
        s.endpoints = (0..3)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        let firsts: std::collections::HashSet<String> = (0..20)
            .map(|n| {
                s.spread = format!("node-{n}");
                EtcdConn::open(&s).unwrap().current_member().to_owned()
            })
            .collect();
        assert_eq!(firsts.len(), 3, "nodes spread over every member");
        let c = EtcdConn::open(&s).unwrap();
        assert_eq!(c.attempt, Duration::from_millis(250));
    }

    #[test]
    fn the_remembered_member_is_tried_first() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("etcd-member");
        let mut s = EtcdSettings::new(
            vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()],
            Duration::from_secs(1),
        );
        s.member_file = Some(f.clone());
        std::fs::write(&f, "http://127.0.0.1:2\n").unwrap();
        assert_eq!(
            EtcdConn::open(&s).unwrap().current_member(),
            "http://127.0.0.1:2"
        );
        // Not one of the endpoints (the configuration changed): ignored.
        std::fs::write(&f, "http://10.0.0.1:2379\n").unwrap();
        s.spread = "x".into();
        let c = EtcdConn::open(&s).unwrap();
        assert!(c.remembered.is_none());
        c.answered(0);
        c.answered(1);
        assert_eq!(
            std::fs::read_to_string(&f).unwrap().trim(),
            "http://127.0.0.1:2"
        );
    }
}
