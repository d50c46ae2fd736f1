//! The cluster's health as CNI STATUS needs it: does a quorum answer
//! (ready), and which members do not (degraded)?

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::failover::describe;
use super::{EtcdConn, EtcdError, Op};

/// What one member said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// It answered, knows a leader, reports no error.
    Healthy {
        /// Its member id.
        id: u64,
        /// The leader it follows (possibly itself).
        leader: u64,
        /// Its raft term.
        term: u64,
    },
    /// It answered but knows no leader: cut off from the others, or in an
    /// election.
    NoLeader,
    /// It answered with errors (alarms such as NOSPACE).
    Errors(Vec<String>),
    /// It did not answer in time, or refused the connection.
    Unreachable(String),
}

/// One member's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    /// Its client URL (as configured).
    pub url: String,
    /// What it said.
    pub state: MemberState,
}

impl fmt::Display for MemberHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            MemberState::Healthy { leader, .. } => {
                write!(f, "{}: ok (leader {leader:x})", self.url)
            }
            MemberState::NoLeader => write!(f, "{}: no leader", self.url),
            MemberState::Errors(e) => write!(f, "{}: errors: {}", self.url, e.join(", ")),
            MemberState::Unreachable(e) => write!(f, "{}: unreachable: {e}", self.url),
        }
    }
}

/// Every configured member's state, and whether a quorum answered.
#[derive(Debug, Clone)]
pub struct ClusterHealth {
    /// One entry per configured endpoint, in order.
    pub members: Vec<MemberHealth>,
    /// A linearizable read succeeded (it needs a leader and a quorum, and
    /// proves the credentials), or why not.
    pub quorum: Result<(), EtcdError>,
}

impl ClusterHealth {
    /// The members that are not healthy (the cluster is degraded when some
    /// are and a quorum still answers).
    pub fn unhealthy(&self) -> Vec<&MemberHealth> {
        self.members
            .iter()
            .filter(|m| !matches!(m.state, MemberState::Healthy { .. }))
            .collect()
    }

    /// Every member's state, `; `-separated.
    pub fn summary(&self) -> String {
        self.members
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl EtcdConn {
    /// Asks every member for its status (concurrently, one attempt budget
    /// each), then reads `probe` linearizably through the failover path,
    /// starting at a member that answered with a leader. Bounded by the
    /// timeout as a whole.
    pub fn health(self: &Arc<Self>, probe: &str) -> ClusterHealth {
        let deadline = Instant::now() + self.timeout;
        let until = (Instant::now() + self.attempt).min(deadline);
        self.rt.block_on(async {
            let asks = self.members.iter().map(|m| async move {
                let ask = async {
                    let c = m.clients().await?;
                    let mut mc = c.maintenance.clone();
                    mc.status().await
                };
                let state = match tokio::time::timeout_at(until, ask).await {
                    Err(_) => {
                        MemberState::Unreachable(format!("no answer within {:?}", self.attempt))
                    }
                    Ok(Err(e)) => {
                        let d = describe(&e);
                        if d.contains("no leader") {
                            MemberState::NoLeader
                        } else {
                            MemberState::Unreachable(d)
                        }
                    }
                    Ok(Ok(s)) if !s.errors().is_empty() => MemberState::Errors(s.errors().to_vec()),
                    Ok(Ok(s)) if s.leader() == 0 => MemberState::NoLeader,
                    Ok(Ok(s)) => MemberState::Healthy {
                        id: s.header().map_or(0, |h| h.member_id()),
                        leader: s.leader(),
                        term: s.raft_term(),
                    },
                };
                MemberHealth {
                    url: m.url().to_owned(),
                    state,
                }
            });
            let members = futures::future::join_all(asks).await;
            // The probe starts where a leader is known, so that a member
            // that is cut off does not cost it an attempt budget.
            if let Some(i) = members
                .iter()
                .position(|m| matches!(m.state, MemberState::Healthy { .. }))
            {
                self.first.store(i, Ordering::Relaxed);
            }
            let op = Op::new(Arc::clone(self), deadline, "checking the cluster");
            let quorum = op.get(probe, None).await.map(drop);
            ClusterHealth { members, quorum }
        })
    }
}
