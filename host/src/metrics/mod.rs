//! The per-exec record: one small JSON line that every `tenet` exec appends
//! to a node-local file, read by the node agent (`tenetctl agent`) for its
//! Prometheus metrics.
//!
//! ```text
//! <state_dir>/metrics/                  (0700)
//!   execs.jsonl                         tenet appends, one line per exec
//!   execs.jsonl.consumed                the agent's renamed copy
//! ```
//!
//! Cost on the hot path: one `open(O_APPEND|O_CLOEXEC|O_NOFOLLOW)`, one
//! `fstat` (the size cap), one `write()` of the whole line, one `close`;
//! no fsync (a line lost in a power cut is a metric sample, not state).
//! A single `write()` of less than [`MAX_LINE`] bytes to a file opened with
//! `O_APPEND` on a local filesystem lands whole and after every other
//! exec's line, so concurrent execs never interleave. Writing is best
//! effort: a failure is logged and never changes the CNI answer.
//!
//! Growth is bounded: the agent consumes the file by renaming it and
//! reading the renamed copy; with no agent running, `tenet` stops appending
//! once the file passes [`MAX_FILE_BYTES`].
//!
//! The record of the exec in progress lives in a thread-local that the
//! command code fills ([`note`]) while it runs: the stages' time and fuel,
//! the apply steps' time, the tenant and addresses.

use std::cell::RefCell;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Records of one exec are refused past this size (one atomic `write()`).
pub const MAX_LINE: usize = 4000;
/// `tenet` stops appending when the file is this large (no agent reads it).
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// File name of the records under `<state_dir>/metrics/`.
pub const FILE_NAME: &str = "execs.jsonl";
/// The agent's renamed copy.
pub const CONSUMED_NAME: &str = "execs.jsonl.consumed";

/// One stage's run in an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSample {
    /// Stage name (from the pipeline file).
    pub name: String,
    /// Wall time of its call, in microseconds.
    pub us: u64,
    /// Fuel it consumed.
    pub fuel: u64,
    /// It failed and was skipped (`failure = "ignore"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// One apply step of an ADD (`record`, `reserve`, `veth:eth0`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSample {
    /// Step name.
    pub name: String,
    /// Its duration, in microseconds.
    pub us: u64,
}

/// The record of one exec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRecord {
    /// Unix time at the end of the exec, in milliseconds.
    pub ts_ms: u64,
    /// The CNI command (`ADD`, `DEL`, `CHECK`, `GC`, `STATUS`).
    pub cmd: String,
    /// The CNI result code: 0 for success, else the error's code.
    pub code: u32,
    /// Wall time of the whole command, in microseconds.
    pub us: u64,
    /// The network (configuration name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// The tenant the pipeline chose (ADD).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    /// Whether the pipeline ran from its bundle artifact (ADD with a
    /// pipeline of stages): false means stage by stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundled: Option<bool>,
    /// The node daemon (`tenet serve`): `served` when it ran the invocation,
    /// `declined: <why>` when the client ran it after asking; absent when
    /// no daemon was there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daemon: Option<String>,
    /// Microseconds from the start to the runtime's answer, when the node
    /// daemon answered before the end (a DEL, once the pod was cut off:
    /// the rest, `us`, ran after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_us: Option<u64>,
    /// The stages run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSample>,
    /// The apply steps done.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepSample>,
    /// Addresses claimed (ADD), as `pool/address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claimed: Vec<String>,
    /// Addresses freed (DEL), as `address`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freed: Vec<String>,
}

impl ExecRecord {
    /// The `code` of a command that succeeded (CNI error codes start at 1).
    pub const SUCCESS: u32 = 0;

    /// Whether the command succeeded.
    pub fn succeeded(&self) -> bool {
        self.code == Self::SUCCESS
    }
}

struct Current {
    rec: ExecRecord,
    started: Instant,
    state_dir: Option<PathBuf>,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Starts the record of an exec of `cmd` on this thread.
pub fn begin(cmd: &str) {
    CURRENT.with(|c| {
        *c.borrow_mut() = Some(Current {
            rec: ExecRecord {
                cmd: cmd.to_owned(),
                ..ExecRecord::default()
            },
            started: Instant::now(),
            state_dir: None,
        });
    });
}

/// Adds to the record of the exec in progress (nothing when none is: the
/// library also runs inside tenetctl and tests).
pub fn note(f: impl FnOnce(&mut ExecRecord)) {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            f(&mut cur.rec);
        }
    });
}

/// Notes that the runtime got its answer now, before the end of the exec
/// in progress ([`ExecRecord::answered_us`]).
pub fn note_answered() {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.rec.answered_us = Some(cur.started.elapsed().as_micros() as u64);
        }
    });
}

/// Names the state directory the record goes to (once the configuration
/// is loaded).
pub fn set_state_dir(dir: &Path) {
    CURRENT.with(|c| {
        if let Some(cur) = c.borrow_mut().as_mut() {
            cur.state_dir = Some(dir.to_owned());
        }
    });
}

/// Ends the exec in progress with result `code` and appends its record
/// under its state directory (none known: nothing is written). Returns
/// the record, for tests.
pub fn finish(code: u32) -> Option<ExecRecord> {
    let cur = CURRENT.with(|c| c.borrow_mut().take())?;
    let mut rec = cur.rec;
    rec.code = code;
    rec.us = cur.started.elapsed().as_micros() as u64;
    rec.ts_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if let Some(dir) = cur.state_dir {
        let mut r = append(&dir, &rec);
        if let Err(AppendError::TooLong(_)) = r {
            // A GC of many attachments: the counts and timings still go.
            let mut short = rec.clone();
            short.claimed.clear();
            short.freed.clear();
            short.steps.clear();
            r = append(&dir, &short);
        }
        if let Err(e) = r {
            tracing::warn!(error = %e, "exec record not written (metrics only)");
        }
    }
    Some(rec)
}

/// The records directory under a state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("metrics")
}

/// Why a record was not written.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The line would not be one atomic write.
    #[error("record of {0} bytes is over the {MAX_LINE}-byte line limit")]
    TooLong(usize),
    /// No agent consumes the file.
    #[error("{0} is over {MAX_FILE_BYTES} bytes (is the node agent running?)")]
    Full(PathBuf),
    /// The filesystem refused.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// Appends `rec` as one line to `<state_dir>/metrics/execs.jsonl`, in one
/// `write()`.
pub fn append(state_dir: &Path, rec: &ExecRecord) -> Result<(), AppendError> {
    let mut line = serde_json::to_vec(rec).expect("records serialise");
    line.push(b'\n');
    if line.len() > MAX_LINE {
        return Err(AppendError::TooLong(line.len()));
    }
    let dir = dir(state_dir);
    let path = dir.join(FILE_NAME);
    let open = || {
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            // std adds O_CLOEXEC itself; no following a planted link.
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
    };
    let mut f = match open() {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| AppendError::Io(dir.clone(), e))?;
            open()
        }
        r => r,
    }
    .map_err(|e| AppendError::Io(path.clone(), e))?;
    let len = f
        .metadata()
        .map_err(|e| AppendError::Io(path.clone(), e))?
        .len();
    if len >= MAX_FILE_BYTES {
        return Err(AppendError::Full(path));
    }
    // One write: short writes do not happen on a regular local file short
    // of ENOSPC, and then the line is lost either way.
    let n = f
        .write(&line)
        .map_err(|e| AppendError::Io(path.clone(), e))?;
    if n != line.len() {
        return Err(AppendError::Io(
            path,
            std::io::Error::new(ErrorKind::WriteZero, "short write"),
        ));
    }
    Ok(())
}

/// Parses the lines of a records file; lines that do not parse (a torn
/// line after a crash, a newer format) are counted, not returned.
pub fn parse(bytes: &[u8]) -> (Vec<ExecRecord>, usize) {
    let mut out = Vec::new();
    let mut bad = 0;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<ExecRecord>(line) {
            Ok(r) => out.push(r),
            Err(_) => bad += 1,
        }
    }
    (out, bad)
}

/// The agent's side: takes the records appended since the last call.
///
/// The file is renamed to [`CONSUMED_NAME`] and read. An exec that opened
/// the file just before the rename writes its line into the renamed copy
/// after it was read, so the copy is kept with the offset read so far, and
/// the next call first reads what was added to it since, then removes it.
#[derive(Debug)]
pub struct Consumer {
    dir: PathBuf,
    /// Bytes of the renamed copy already read.
    offset: u64,
}

impl Consumer {
    /// A consumer of `<state_dir>/metrics/`. A renamed copy left by an
    /// earlier agent is dropped: its records were counted by that agent's
    /// process (whose counters are gone with it).
    pub fn new(state_dir: &Path) -> Self {
        let dir = dir(state_dir);
        let _ = fs::remove_file(dir.join(CONSUMED_NAME));
        Self { dir, offset: 0 }
    }

    /// The records appended since the last call, and the number of lines
    /// that did not parse.
    pub fn take(&mut self) -> std::io::Result<(Vec<ExecRecord>, usize)> {
        let consumed = self.dir.join(CONSUMED_NAME);
        let mut bytes = Vec::new();
        // The tail of the previous copy: lines written after it was read.
        match fs::read(&consumed) {
            Ok(b) => {
                let from = usize::try_from(self.offset).unwrap_or(usize::MAX);
                bytes.extend_from_slice(b.get(from..).unwrap_or_default());
                fs::remove_file(&consumed)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.offset = 0;
        match fs::rename(self.dir.join(FILE_NAME), &consumed) {
            Ok(()) => {
                let b = fs::read(&consumed)?;
                // Only whole lines: a line being written is read next time.
                let whole = b.iter().rposition(|c| *c == b'\n').map_or(0, |i| i + 1);
                self.offset = whole as u64;
                bytes.extend_from_slice(&b[..whole]);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(parse(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(cmd: &str, code: u32) -> ExecRecord {
        ExecRecord {
            cmd: cmd.into(),
            code,
            us: 1234,
            tenant: "team-a".into(),
            stages: vec![StageSample {
                name: "tenant".into(),
                us: 12,
                fuel: 3456,
                skipped: false,
            }],
            ..ExecRecord::default()
        }
    }

    #[test]
    fn appended_records_parse_back_and_are_consumed_once() {
        let d = tempfile::tempdir().unwrap();
        let mut c = Consumer::new(d.path());
        assert_eq!(c.take().unwrap(), (vec![], 0), "no file yet");
        append(d.path(), &rec("ADD", 0)).unwrap();
        append(d.path(), &rec("DEL", 7)).unwrap();
        let (got, bad) = c.take().unwrap();
        assert_eq!(bad, 0);
        assert_eq!(got, vec![rec("ADD", 0), rec("DEL", 7)]);
        assert_eq!(c.take().unwrap(), (vec![], 0), "each record once");
        // A writer that opened the file before the rename writes into the
        // renamed copy: the next take reads that line too.
        append(d.path(), &rec("ADD", 0)).unwrap();
        fs::rename(
            dir(d.path()).join(FILE_NAME),
            dir(d.path()).join("held-open"),
        )
        .unwrap();
        let mut late = OpenOptions::new()
            .append(true)
            .open(dir(d.path()).join("held-open"))
            .unwrap();
        fs::rename(
            dir(d.path()).join("held-open"),
            dir(d.path()).join(FILE_NAME),
        )
        .unwrap();
        assert_eq!(c.take().unwrap().0.len(), 1);
        let mut line = serde_json::to_vec(&rec("CHECK", 0)).unwrap();
        line.push(b'\n');
        late.write_all(&line).unwrap();
        let (got, _) = c.take().unwrap();
        assert_eq!(got, vec![rec("CHECK", 0)], "late line read from the copy");
        assert!(!dir(d.path()).join(CONSUMED_NAME).exists());
    }

    #[test]
    fn torn_and_foreign_lines_are_counted_not_returned() {
        let (got, bad) =
            parse(b"{\"ts_ms\":1,\"cmd\":\"ADD\",\"code\":0,\"us\":5}\n{\"cmd\":\n\nnot json\n");
        assert_eq!(got.len(), 1);
        assert_eq!(bad, 2);
    }

    #[test]
    fn a_full_file_stops_appends_and_long_records_are_refused() {
        let d = tempfile::tempdir().unwrap();
        append(d.path(), &rec("ADD", 0)).unwrap();
        let path = dir(d.path()).join(FILE_NAME);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(MAX_FILE_BYTES).unwrap();
        assert!(matches!(
            append(d.path(), &rec("ADD", 0)),
            Err(AppendError::Full(_))
        ));
        assert_eq!(fs::metadata(&path).unwrap().len(), MAX_FILE_BYTES);
        let mut big = rec("ADD", 0);
        big.tenant = "x".repeat(MAX_LINE);
        assert!(matches!(
            append(d.path(), &big),
            Err(AppendError::TooLong(_))
        ));
    }

    #[test]
    fn a_link_planted_as_the_file_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("elsewhere");
        fs::write(&target, b"").unwrap();
        fs::create_dir_all(dir(d.path())).unwrap();
        std::os::unix::fs::symlink(&target, dir(d.path()).join(FILE_NAME)).unwrap();
        assert!(matches!(
            append(d.path(), &rec("ADD", 0)),
            Err(AppendError::Io(..))
        ));
        assert_eq!(fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn the_thread_record_collects_notes_and_is_written_on_finish() {
        let d = tempfile::tempdir().unwrap();
        note(|r| r.tenant = "ignored".into());
        begin("ADD");
        set_state_dir(d.path());
        note(|r| r.tenant = "team-b".into());
        let r = finish(0).unwrap();
        assert_eq!(r.tenant, "team-b");
        assert!(finish(0).is_none(), "one record per begin");
        let (got, _) = Consumer::new(d.path()).take().unwrap();
        assert_eq!(got, vec![r]);
    }
}
