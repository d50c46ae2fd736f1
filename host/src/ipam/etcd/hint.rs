//! The node-local **hint file** of `reserve`: what its read transaction
//! would return, as this node last saw it, so that the common reserve is one
//! write transaction (see "Hints" in the module docs).
//!
//! A hint is never trusted. Every decision made from it is guarded by
//! compares in etcd: the handle and the pending key are absent, and the
//! block the address is taken in holds exactly the hinted value (the value
//! itself, so that a revision number reused after an etcd restore cannot
//! pass), which implies the hinted pool and subnet records (see
//! `Writes::record_used` in `plan.rs`). A write that loses its compares
//! returns the fresh handle and blocks in its failure branch. A missing,
//! unreadable, torn, foreign or corrupt file, or one whose subnet does not
//! hold its blocks, is simply not used; losing it costs one read.
//!
//! # File format and concurrency
//!
//! `tenet-hints <length> <fnv1a64 hex>\n` (the length zero-padded to ten
//! digits) then `<length>` bytes of JSON,
//! then possibly leftover bytes of a longer earlier version (ignored). It is
//! rewritten **in place**, from offset 0, with one `pwrite` and no fsync: a
//! temp file and a rename per reserve cost more client CPU than the
//! reserve's transaction itself (creating and then deleting an inode per
//! write on ext4), and the checksum gives readers the same guarantee: they
//! use a whole version or none. Concurrent `tenet` processes of one node
//! share the file without locks. One write is one syscall, which local file
//! systems serialise against other writes of the file, so the header always
//! describes the bytes after it once writers are done; a reader that
//! overlaps a write, or a writer killed half-way, sees a checksum mismatch
//! and reads etcd instead. The last writer wins; a lost update only makes
//! the next hint stale.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::keys::esc;
use super::model::{BlockRec, NodeLease};

/// Format of the file; another version is ignored (and overwritten).
const VERSION: u32 = 1;
/// Most (pool, tenant) entries one file keeps; the least recently used go.
const MAX_TENANTS: usize = 64;
/// Most blocks with room one (pool, tenant) entry keeps, in address order:
/// the next reserve takes the first that has a free address, so a few are
/// enough, and the planning cost stays the same however full the subnet is.
pub(super) const MAX_BLOCKS: usize = 4;
/// A file larger than this is not ours (or not sane): ignored.
const MAX_FILE: u64 = 1 << 20;
/// First word of the header line.
const MAGIC: &str = "tenet-hints";

/// FNV-1a, 64 bits: detects torn and mixed versions (not an adversary: the
/// file is root's, and every hint is checked against etcd anyway).
fn fnv64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The JSON of a file's current version, if its header and checksum hold.
fn body(bytes: &[u8]) -> Option<&[u8]> {
    let nl = bytes.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&bytes[..nl]).ok()?;
    let mut w = head.split(' ');
    if w.next()? != MAGIC {
        return None;
    }
    let len: usize = w.next()?.parse().ok()?;
    let sum = u64::from_str_radix(w.next()?, 16).ok()?;
    if w.next().is_some() {
        return None;
    }
    let json = bytes.get(nl + 1..nl + 1 + len)?;
    (fnv64(json) == sum).then_some(json)
}

/// A record as stored in etcd: its exact value and its mod revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Val {
    /// The value, byte for byte (records are JSON, hence UTF-8).
    pub value: String,
    /// Its `mod_revision`.
    pub rev: i64,
}

impl Val {
    /// `None` for a value that is not UTF-8 (never ours: not hinted).
    pub fn new(value: &[u8], rev: i64) -> Option<Self> {
        Some(Val {
            value: String::from_utf8(value.to_vec()).ok()?,
            rev,
        })
    }
}

/// One of this node's blocks with room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BlockHint {
    /// The block's etcd key.
    pub key: String,
    /// Its value and revision.
    #[serde(flatten)]
    pub val: Val,
    /// Ordinals seen pending, with when they were first seen (ms). Pending
    /// keys vanish with their lease without the block changing, so entries
    /// older than one claim TTL are dropped on load.
    #[serde(default)]
    pub pend: BTreeMap<u32, u64>,
}

/// What the next reserve of `tenant` in `pool` needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct TenantHint {
    pub pool: String,
    pub tenant: String,
    /// Last reserve that used it (ms), for eviction.
    pub used_ms: u64,
    /// `subnet/<pool>/<tenant>`.
    pub subnet: Val,
    /// This node's first blocks with room, in address order.
    pub blocks: Vec<BlockHint>,
}

/// One file: one etcd prefix, one network, one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Hints {
    pub version: u32,
    pub prefix: String,
    pub network: String,
    pub node: String,
    /// The node's claim lease as last used.
    #[serde(default)]
    pub lease: Option<NodeLease>,
    /// Every `pool/<pool>` record of the network.
    #[serde(default)]
    pub pools: BTreeMap<String, Val>,
    #[serde(default)]
    pub tenants: Vec<TenantHint>,
}

/// Where the hints of one (prefix, network) live under `dir`. `@` is never
/// in an escaped prefix nor in a network name, so names cannot collide.
pub(super) fn path(dir: &Path, prefix: &str, network: &str) -> PathBuf {
    dir.join(format!("{}@{network}.json", esc(prefix)))
}

impl Hints {
    /// An empty file for this store and network.
    pub fn empty(prefix: &str, network: &str, node: &str) -> Self {
        Hints {
            version: VERSION,
            prefix: prefix.to_owned(),
            network: network.to_owned(),
            node: node.to_owned(),
            ..Hints::default()
        }
    }

    /// Reads the file at `file` (see [`HintFile::load`]).
    #[cfg(test)]
    pub fn load(
        file: &Path,
        prefix: &str,
        network: &str,
        node: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<Self> {
        HintFile::open(file.to_owned()).load(prefix, network, node, now_ms, ttl_ms)
    }

    /// Rewrites the file at `file` (see [`HintFile::store`]).
    #[cfg(test)]
    pub fn store(&self, file: &Path) {
        HintFile::open(file.to_owned()).store(self);
    }

    /// The entry of (`pool`, `tenant`).
    pub fn tenant(&self, pool: &str, tenant: &str) -> Option<&TenantHint> {
        self.tenants
            .iter()
            .find(|t| t.pool == pool && t.tenant == tenant)
    }

    /// Records `t`, replacing the entry of its (pool, tenant); evicts the
    /// least recently used beyond [`MAX_TENANTS`].
    pub fn put_tenant(&mut self, t: TenantHint) {
        self.tenants
            .retain(|x| !(x.pool == t.pool && x.tenant == t.tenant));
        self.tenants.push(t);
        if self.tenants.len() > MAX_TENANTS {
            self.tenants.sort_by_key(|t| std::cmp::Reverse(t.used_ms));
            self.tenants.truncate(MAX_TENANTS);
        }
    }

    /// A block was rewritten (by confirm or release) at `rev` with `value`;
    /// `done` are ordinals whose pending keys that transaction deleted.
    /// Drops the block once it has no room. True when anything changed.
    pub fn block_written(&mut self, key: &str, value: &[u8], rev: i64, done: &[u32]) -> bool {
        let mut changed = false;
        for t in &mut self.tenants {
            let Some(i) = t.blocks.iter().position(|b| b.key == key) else {
                continue;
            };
            let b = &mut t.blocks[i];
            // Another process may already have written a newer version.
            if b.val.rev > rev {
                continue;
            }
            let (Some(val), Ok(rec)) = (
                Val::new(value, rev),
                serde_json::from_slice::<BlockRec>(value),
            ) else {
                t.blocks.remove(i);
                changed = true;
                continue;
            };
            b.val = val;
            for o in done {
                b.pend.remove(o);
            }
            if rec.count_used() + b.pend.len() >= rec.size() as usize {
                t.blocks.remove(i);
            }
            changed = true;
        }
        changed
    }
}

/// One process's handle on a hint file: opened once per operation, read
/// and then rewritten through the same descriptor. A reserve's hint I/O is
/// on every ADD's path, and its syscalls were a fifth of the client CPU per
/// reserve: a second `open` (with `O_CREAT`, a slower path lookup than a
/// plain open), `read_to_end`'s probing reads, an `fstat` before each write.
/// Now: one `open`, one `pread` (a file larger than the first buffer costs
/// more, never a wrong answer), one `pwrite`.
pub(super) struct HintFile {
    path: PathBuf,
    /// `None` when it could not be opened (missing: created by `store`).
    file: Option<std::fs::File>,
    /// The file's length as last read, when it was.
    len: Option<u64>,
}

/// First read's size: a file for a few tenants is 1–3 KiB.
const FIRST_READ: usize = 16 << 10;

impl HintFile {
    /// Opens `path` for reading and writing; a missing or unreadable file is
    /// not an error (it is a hint).
    pub fn open(path: PathBuf) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ok();
        HintFile {
            path,
            file,
            len: None,
        }
    }

    /// The hints; `None` when the file is missing, unreadable, torn, of
    /// another version, store or node, or does not parse. Pending ordinals
    /// seen more than `ttl_ms` ago are dropped.
    pub fn load(
        &mut self,
        prefix: &str,
        network: &str,
        node: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Option<Hints> {
        let f = self.file.as_ref()?;
        let mut bytes = vec![0u8; FIRST_READ];
        let mut n = 0;
        loop {
            match f.read_at(&mut bytes[n..], n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
            if n as u64 > MAX_FILE {
                return None;
            }
            if n == bytes.len() {
                bytes.resize(bytes.len() * 2, 0);
            }
        }
        bytes.truncate(n);
        self.len = Some(n as u64);
        let file = &self.path;
        let Some(json) = body(&bytes) else {
            tracing::debug!(file = %file.display(), "ignoring a torn or foreign hint file");
            return None;
        };
        let mut h: Hints = match serde_json::from_slice(json) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(file = %file.display(), error = %e, "ignoring a corrupt hint file");
                return None;
            }
        };
        if h.version != VERSION || h.prefix != prefix || h.network != network || h.node != node {
            return None;
        }
        for t in &mut h.tenants {
            for b in &mut t.blocks {
                b.pend
                    .retain(|_, seen| now_ms < seen.saturating_add(ttl_ms));
            }
        }
        Some(h)
    }

    /// Rewrites the file in place (see the module docs). Failures are
    /// logged and otherwise ignored: it is a hint.
    pub fn store(&mut self, h: &Hints) {
        if let Err(e) = self.try_store(h) {
            tracing::debug!(file = %self.path.display(), error = %e, "could not write the hint file");
        }
    }

    fn try_store(&mut self, h: &Hints) -> std::io::Result<()> {
        // The header has a fixed width (a zero-padded length), so the JSON
        // is serialised once, straight after it, and the header filled in.
        let head = |len: usize, sum: u64| format!("{MAGIC} {len:010} {sum:016x}\n");
        let at = head(0, 0).len();
        let mut bytes = Vec::with_capacity(at + self.len.unwrap_or(0) as usize + 256);
        bytes.resize(at, 0);
        serde_json::to_writer(&mut bytes, h).expect("hints serialise");
        let json = &bytes[at..];
        let header = head(json.len(), fnv64(json));
        bytes[..at].copy_from_slice(header.as_bytes());
        if self.file.is_none() {
            let open = || {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&self.path)
            };
            self.file = Some(match open() {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // First write on this node: the directory is made once.
                    let dir = self.path.parent().unwrap_or(Path::new("."));
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)?;
                    open()?
                }
                Err(e) => return Err(e),
            });
        }
        let f = self.file.as_ref().expect("opened above");
        // One syscall: serialised against the node's other writers.
        f.write_all_at(&bytes, 0)?;
        // Leftovers of a longer version are ignored by readers; only keep
        // the file from staying much larger than its content (the length
        // as read, when it was, saves an fstat per write).
        let want = bytes.len() as u64;
        let len = match self.len {
            Some(l) => l.max(want),
            None => f.metadata()?.len(),
        };
        let len = if len > want.saturating_mul(2).max(64 << 10) {
            f.set_len(want)?;
            want
        } else {
            len
        };
        self.len = Some(len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Hints {
        let mut h = Hints::empty("/tenet", "net", "n1");
        let rec = BlockRec::new("n1", "10.0.0.0/30".parse().unwrap());
        h.put_tenant(TenantHint {
            pool: "p".into(),
            tenant: "t".into(),
            used_ms: 1,
            subnet: Val::new(b"{}", 3).unwrap(),
            blocks: vec![BlockHint {
                key: "/tenet/ipam/net/block/p/t/n1/10.0.0.0%2F30".into(),
                val: Val::new(&serde_json::to_vec(&rec).unwrap(), 5).unwrap(),
                pend: BTreeMap::from([(1, 100), (2, 10_000)]),
            }],
        });
        h
    }

    #[test]
    fn round_trips_and_ignores_what_is_not_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let f = path(dir.path(), "/tenet", "net");
        assert_eq!(f.file_name().unwrap(), "%2Ftenet@net.json");
        assert!(Hints::load(&f, "/tenet", "net", "n1", 0, 1000).is_none());
        let h = sample();
        h.store(&f);
        // Pending ordinals older than the TTL are dropped on load.
        let back = Hints::load(&f, "/tenet", "net", "n1", 10_500, 1000).unwrap();
        assert_eq!(
            back.tenant("p", "t").unwrap().blocks[0].pend,
            BTreeMap::from([(2, 10_000)])
        );
        for (prefix, net, node) in [("/other", "net", "n1"), ("/tenet", "net", "n2")] {
            assert!(Hints::load(&f, prefix, net, node, 0, 1000).is_none());
        }
        let good = std::fs::read(&f).unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        let json = body(&good).unwrap().to_vec();
        for junk in [
            &b"{\"version\":1,"[..],
            b"",
            b"\x00\xff",
            b"[]",
            &good[..good.len() - 1],
            &flipped,
            &json,
        ] {
            std::fs::write(&f, junk).unwrap();
            assert!(Hints::load(&f, "/tenet", "net", "n1", 0, 1000).is_none());
        }
        // A shorter version over a longer one: the leftover tail is ignored.
        let mut big = sample();
        big.tenants[0].tenant = "t".repeat(500);
        big.store(&f);
        h.store(&f);
        assert!(std::fs::metadata(&f).unwrap().len() > good.len() as u64);
        assert_eq!(
            Hints::load(&f, "/tenet", "net", "n1", 0, u64::MAX).unwrap(),
            h
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_written_block_is_updated_then_dropped_when_full() {
        let mut h = sample();
        let key = h.tenants[0].blocks[0].key.clone();
        let mut rec = BlockRec::new("n1", "10.0.0.0/30".parse().unwrap());
        rec.set_used(1, true);
        let v = serde_json::to_vec(&rec).unwrap();
        // Older than what the file has: ignored.
        assert!(!h.block_written(&key, &v, 4, &[1]));
        assert!(h.block_written(&key, &v, 6, &[1]));
        let b = &h.tenants[0].blocks[0];
        assert_eq!((b.val.rev, b.pend.len()), (6, 1));
        rec.set_used(0, true);
        rec.set_used(3, true);
        let v = serde_json::to_vec(&rec).unwrap();
        // 3 used + 1 pending of 4: no room, gone.
        assert!(h.block_written(&key, &v, 7, &[]));
        assert!(h.tenants[0].blocks.is_empty());
    }

    #[test]
    fn tenants_are_evicted_least_recently_used_first() {
        let mut h = Hints::empty("/tenet", "net", "n1");
        for i in 0..(MAX_TENANTS as u64 + 5) {
            h.put_tenant(TenantHint {
                pool: "p".into(),
                tenant: format!("t{i}"),
                used_ms: i,
                subnet: Val::new(b"{}", 1).unwrap(),
                blocks: vec![],
            });
        }
        assert_eq!(h.tenants.len(), MAX_TENANTS);
        assert!(h.tenant("p", "t0").is_none());
        assert!(h.tenant("p", &format!("t{}", MAX_TENANTS + 4)).is_some());
    }
}
