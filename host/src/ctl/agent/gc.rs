//! The agent's GC: attachments whose pod sandbox the runtime no longer
//! lists are torn down with CNI GC's teardown ([`Engine::gc_where`]).
//!
//! Safety, in order:
//! - nothing happens unless the runtime answered the sandbox list (a failed
//!   call is never read as "no pods");
//! - an attachment whose sandbox is listed, in any state, is kept;
//! - an ADD in flight (record `applying`, its writer alive) is kept;
//! - a record younger than the minimum age when the list was asked for is
//!   kept: the runtime adds a sandbox to its list only once its network is
//!   set up, so a just-finished ADD is not listed yet;
//! - the choice is made on the records as listed before the teardown and
//!   checked again on each record as the engine reads it (its age too), so
//!   an ADD that starts meanwhile is never picked.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::apply::{Backends, Phase, Record, Records};
use crate::config::Config;
use crate::ipam::{AttachmentKey, ProcessIdentity};

/// What the decision needs of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The attachment.
    pub key: AttachmentKey,
    /// Its ADD's progress.
    pub phase: Phase,
    /// The ADD's process still runs.
    pub writer_alive: bool,
    /// Age of the record when the sandbox list was asked for (`None`: not
    /// known, which counts as young).
    pub age: Option<Duration>,
}

/// The decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Sandbox gone: to tear down.
    pub stale: Vec<AttachmentKey>,
    /// Sandbox listed.
    pub live: Vec<AttachmentKey>,
    /// ADD still running.
    pub in_flight: Vec<AttachmentKey>,
    /// Too recent to judge.
    pub young: Vec<AttachmentKey>,
}

/// Sorts records into what stays and what goes; pure.
pub fn decide(cands: &[Candidate], sandboxes: &HashSet<String>, min_age: Duration) -> Decision {
    let mut d = Decision::default();
    for c in cands {
        let k = c.key.clone();
        if sandboxes.contains(&c.key.container_id) {
            d.live.push(k);
        } else if c.phase == Phase::Applying && c.writer_alive {
            d.in_flight.push(k);
        } else if c.age.is_none_or(|a| a < min_age) {
            d.young.push(k);
        } else {
            d.stale.push(k);
        }
    }
    d
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The runtime that answered.
    pub runtime: String,
    /// Sandboxes it listed.
    pub sandboxes: usize,
    /// The decision.
    pub decision: Decision,
    /// Attachments torn down.
    pub removed: Vec<AttachmentKey>,
    /// Claims the stores freed that had no record.
    pub released: usize,
    /// Idle tenant networks removed (their bridges).
    pub idle_tenants_removed: Vec<String>,
}

/// Why a pass did nothing or not everything.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The sandbox list failed: nothing was touched.
    #[error("listing pod sandboxes failed, nothing removed: {0}")]
    Cri(String),
    /// Records, backends or a teardown failed (what was done is reported).
    #[error("{msg}")]
    Apply {
        /// What failed.
        msg: String,
        /// What was done before and after.
        report: Box<Report>,
    },
}

fn record_age(records: &Records, key: &AttachmentKey, at: SystemTime) -> Option<Duration> {
    let m = std::fs::metadata(records.path(key).ok()?)
        .ok()?
        .modified()
        .ok()?;
    Some(at.duration_since(m).unwrap_or_default())
}

fn candidate(records: &Records, rec: &Record, at: SystemTime) -> Candidate {
    Candidate {
        key: rec.key.clone(),
        phase: rec.phase,
        writer_alive: ProcessIdentity {
            pid: rec.writer_pid,
            start_time: rec.writer_start,
        }
        .is_alive(),
        age: record_age(records, &rec.key, at),
    }
}

/// One GC pass of `network`'s attachments against the runtime at `socket`.
pub fn run(
    cfg: &Config,
    network: &str,
    socket: &Path,
    timeout: Duration,
    min_age: Duration,
) -> Result<Report, GcError> {
    // Ages are measured from before the list: a record written after the
    // runtime answered is younger than it looks.
    let asked = SystemTime::now();
    let list = super::cri::list_sandboxes(socket, timeout).map_err(GcError::Cri)?;
    let mut report = Report {
        runtime: list.runtime.clone(),
        sandboxes: list.ids.len(),
        ..Report::default()
    };
    let fail = |msg: String, report: &Report| GcError::Apply {
        msg,
        report: Box::new(report.clone()),
    };
    let records = Records::new(&cfg.state_dir);
    let recs = records
        .list(Some(network))
        .map_err(|e| fail(e.to_string(), &report))?;
    let cands: Vec<Candidate> = recs.iter().map(|r| candidate(&records, r, asked)).collect();
    report.decision = decide(&cands, &list.ids, min_age);
    let stale: HashSet<&AttachmentKey> = report.decision.stale.iter().collect();
    let valid: Vec<(String, String)> = report
        .decision
        .live
        .iter()
        .map(|k| (k.container_id.clone(), k.ifname.clone()))
        .collect();
    let backends = Backends::open(cfg).map_err(|e| fail(e.to_string(), &report))?;
    let engine = backends.engine(cfg);
    // Checked again on the record as the engine reads it now.
    let result = engine.gc_where(network, &valid, |rec| {
        stale.contains(&rec.key) && {
            let again = candidate(&records, rec, asked);
            decide(std::slice::from_ref(&again), &list.ids, min_age)
                .stale
                .len()
                == 1
        }
    });
    match result {
        Ok(s) => {
            report.removed = s.torn_down;
            report.released = s.released.len();
            report.idle_tenants_removed = s.idle_tenants_removed;
            Ok(report)
        }
        Err(e) => {
            // What was torn down before the error is not in the error; the
            // records tell: a stale key whose record is gone was removed.
            report.removed = report
                .decision
                .stale
                .iter()
                .filter(|k| records.load(k).is_ok_and(|r| r.is_none()))
                .cloned()
                .collect();
            Err(fail(format!("{}: {}", e.step, e.details), &report))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, phase: Phase, alive: bool, age_s: Option<u64>) -> Candidate {
        Candidate {
            key: AttachmentKey::new("tenet", id, "eth0"),
            phase,
            writer_alive: alive,
            age: age_s.map(Duration::from_secs),
        }
    }

    fn ids(keys: &[AttachmentKey]) -> Vec<&str> {
        keys.iter().map(|k| k.container_id.as_str()).collect()
    }

    #[test]
    fn only_old_settled_records_of_unlisted_sandboxes_go() {
        let sandboxes: HashSet<String> = ["live-ready", "live-applying"]
            .into_iter()
            .map(String::from)
            .collect();
        let cands = [
            cand("live-ready", Phase::Ready, false, Some(3600)),
            cand("live-applying", Phase::Applying, true, Some(1)),
            cand("gone-ready", Phase::Ready, false, Some(3600)),
            cand("gone-crashed-add", Phase::Applying, false, Some(600)),
            cand("gone-add-running", Phase::Applying, true, Some(3600)),
            cand("gone-just-ready", Phase::Ready, false, Some(2)),
            cand("gone-age-unknown", Phase::Ready, false, None),
        ];
        let d = decide(&cands, &sandboxes, Duration::from_secs(60));
        assert_eq!(ids(&d.stale), ["gone-ready", "gone-crashed-add"]);
        assert_eq!(ids(&d.live), ["live-ready", "live-applying"]);
        assert_eq!(ids(&d.in_flight), ["gone-add-running"]);
        assert_eq!(ids(&d.young), ["gone-just-ready", "gone-age-unknown"]);
    }

    #[test]
    fn an_empty_list_from_the_runtime_removes_only_old_records() {
        let d = decide(
            &[
                cand("a", Phase::Ready, false, Some(61)),
                cand("b", Phase::Ready, false, Some(59)),
            ],
            &HashSet::new(),
            Duration::from_secs(60),
        );
        assert_eq!(ids(&d.stale), ["a"]);
        assert_eq!(ids(&d.young), ["b"]);
    }

    #[test]
    fn a_failed_sandbox_list_touches_nothing() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            state_dir: d.path().to_owned(),
            ..Config::default()
        };
        let records = Records::new(d.path());
        let rec = Record {
            version: crate::apply::record::RECORD_VERSION,
            key: AttachmentKey::new("tenet", "gone", "eth0"),
            netns: "/proc/1/ns/net".into(),
            tenant: "t".into(),
            phase: Phase::Ready,
            writer_pid: 1,
            writer_start: 0,
            interfaces: vec![],
            subnets: vec![],
            bridge: None,
            annotations: vec![],
            group: None,
            result: None,
        };
        records.store(&rec).unwrap();
        let e = run(
            &cfg,
            "tenet",
            &d.path().join("no.sock"),
            Duration::from_secs(1),
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(matches!(e, GcError::Cri(_)), "{e}");
        assert!(records.load(&rec.key).unwrap().is_some(), "record kept");
    }
}
