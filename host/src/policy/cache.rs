//! The precompiled-artifact cache and how a missing artifact is rebuilt.
//!
//! Layout: `<cache_dir>/<profile id>/<module sha256>.cwasm`. The profile id
//! names the wasmtime version and engine config (see `engine`), so artifacts
//! from another tenet release are never even looked at: after an upgrade every
//! lookup misses, and the miss path below rebuilds them.
//!
//! A `.cwasm` is native code that `deserialize` trusts, so a file is only
//! loaded when it and its directory belong to our effective uid and are not
//! writable by group or others, and it is not a symlink. Files are published
//! by rename and never rewritten in place: running execs keep the old inode
//! mapped (rewriting a mapped file in place would SIGBUS them).
//!
//! **Fallback on a miss** (missing, from another profile, or corrupt): the
//! CNI binary carries no compiler (JIT on every exec costs 40-190 ms), so it
//! runs `tenetctl policy compile-module` once to rebuild the artifact, which
//! later execs then load. Pod creation pays that once per module and upgrade;
//! if it fails, the stage fails with "artifact unavailable" (CNI code 11, try
//! again later) or is skipped when its failure policy is `ignore`.
//!
//! **What an artifact was compiled from.** Every artifact ends with a small
//! trailer that tenet writes after wasmtime's bytes ([`Trailer`]): the key
//! it is stored under and the sha256 of each module it was compiled from
//! (one for a stage, every stage's in order for a bundle). The loader opens
//! the file once (no symlinks), checks its owner and mode on the open file,
//! reads the trailer with one `pread`, and hands that same open file to
//! wasmtime (through `/proc/self/fd`, so the mmap path is kept and no other
//! file can be swapped in between). An artifact whose trailer records other
//! digests than the ones asked for is refused ([`LoadError::Mismatch`],
//! code 103): it is a wrong or swapped file, never a miss to paper over. A
//! file without a readable trailer is a miss (corrupt, truncated, or written
//! by something else) and is rebuilt. The threat is a wrong file in the
//! cache (an operator's copy, a stale tool, a bug), not a forger with root:
//! anyone who can write the cache can also write the trailer, which is why
//! the cache must stay root-owned and private.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::engine::profile_id;

/// The largest entry of the per-file index read (a parsed manifest is a
/// few KiB; anything larger is not one we wrote).
const BY_FILE_MAX: usize = 4 << 20;

/// How long the CNI binary waits for the compiler on a miss.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(60);

/// The artifact cache of one engine profile.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    root: PathBuf,
    dir: PathBuf,
    /// Our effective uid, which must own everything we load.
    euid: u32,
    /// Set once the profile directory was found trustworthy, so it is
    /// checked once per pipeline rather than once per stage (every syscall
    /// is on the pod-creation path). A failed check is not remembered: the
    /// rebuild path may create the directory.
    dir_trusted: OnceLock<()>,
}

impl ArtifactCache {
    /// The cache under `root` (e.g. `/var/lib/tenet/cache`).
    pub fn new(root: &Path) -> Self {
        ArtifactCache {
            root: root.to_owned(),
            dir: root.join(profile_id()),
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            dir_trusted: OnceLock::new(),
        }
    }

    /// The cache root, as configured.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the artifact for a module digest lives.
    pub fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.cwasm"))
    }

    /// The digest recorded for a module file, if this exact file (same
    /// device, inode, size and mtime) was hashed before. Lets the hot path
    /// find an unpinned module's artifact with one `stat` instead of hashing
    /// the whole file on every exec.
    pub fn known_digest(&self, wasm: &Path) -> Option<String> {
        self.known_digest_of(&std::fs::metadata(wasm).ok()?)
    }

    /// [`Self::known_digest`] for a module file whose metadata the caller
    /// already has (saves a `stat`).
    pub fn known_digest_of(&self, wasm: &std::fs::Metadata) -> Option<String> {
        let d = String::from_utf8(self.read_by_file(&file_key(wasm))?).ok()?;
        (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())).then_some(d)
    }

    /// Data derived from the file at `path` (`kind` names what, e.g. a
    /// parsed manifest), recorded for this exact version of it: the path
    /// and the file identity are the key, so any edit or replacement misses.
    pub fn derived(&self, path: &Path, meta: &std::fs::Metadata, kind: &str) -> Option<Vec<u8>> {
        self.read_by_file(&derived_key(path, meta, kind))
    }

    /// Records data derived from this exact version of the file at `path`.
    pub fn remember_derived(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        kind: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        self.publish_by_file(&derived_key(path, meta, kind), bytes)
    }

    /// Reads the entry `name` of the per-file index (`by-file/`), if it is
    /// ours and private.
    fn read_by_file(&self, name: &str) -> Option<Vec<u8>> {
        let entry = self.dir.join("by-file").join(name);
        // Open without following links, then check the opened file itself:
        // one path lookup instead of two, and no window between check and read.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&entry)
            .ok()?;
        let meta = f.metadata().ok()?;
        check_trusted_meta(&entry, &meta, false, self.euid).ok()?;
        // Entries are small and published by rename, never rewritten in
        // place: read exactly the size just checked, in one `read` (no size
        // probe, no read to EOF: three syscalls fewer per entry, and every
        // exec reads one per stage plus the manifest's).
        let len = usize::try_from(meta.len())
            .ok()
            .filter(|&n| n <= BY_FILE_MAX)?;
        let mut bytes = vec![0; len];
        f.read_exact(&mut bytes).ok()?;
        Some(bytes)
    }

    /// Publishes the entry `name` of the per-file index, creating the
    /// cache's private directories as needed.
    fn publish_by_file(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let dir = self.dir.join("by-file");
        std::fs::create_dir_all(&dir)?;
        for d in [&self.root, &self.dir, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
        publish(&dir, name, bytes)
    }

    /// Records `sha256` as the digest of this exact module file.
    pub fn remember_digest(&self, wasm: &Path, sha256: &str) -> std::io::Result<()> {
        self.publish_by_file(&file_key(&std::fs::metadata(wasm)?), sha256.as_bytes())
    }

    /// Loads the precompiled component stored under `key`, which must have
    /// been compiled from modules with exactly these `digests` (one for a
    /// stage, each stage's in order for a bundle).
    pub fn load(
        &self,
        engine: &Engine,
        key: &str,
        digests: &[&str],
    ) -> Result<Component, LoadError> {
        let path = self.path_for(key);
        if self.dir_trusted.get().is_none() {
            check_trusted(&self.dir, true, self.euid).map_err(LoadError::Miss)?;
            let _ = self.dir_trusted.set(());
        }
        // One open, without following links; every check below is on this
        // open file, and wasmtime maps this same file.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| LoadError::Miss(format!("{}: {e}", path.display())))?;
        let meta = file
            .metadata()
            .map_err(|e| LoadError::Miss(format!("{}: {e}", path.display())))?;
        check_trusted_meta(&path, &meta, false, self.euid).map_err(LoadError::Miss)?;
        let trailer = Trailer::read(&file, meta.len())
            .map_err(|m| LoadError::Miss(format!("{}: {m}", path.display())))?;
        trailer.check(key, digests).map_err(|m| {
            LoadError::Mismatch(format!(
                "{}: {m}; refusing to run it (remove the file and run `tenetctl policy compile`)",
                path.display()
            ))
        })?;
        let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        // SAFETY: the file was written by `store` (our profile, our uid, not
        // writable by others, published by rename and never modified in
        // place), which is what `deserialize_file` requires; wasmtime still
        // checks the version, flags and target in the header and refuses a
        // mismatch, which we treat as a miss. The trailer after its bytes
        // is not part of any section wasmtime reads.
        unsafe { Component::deserialize_file(engine, &fd_path) }
            .map_err(|e| LoadError::Miss(format!("{}: {}", path.display(), e.root_cause())))
    }

    /// What the artifact stored under `key` records, if it has a readable
    /// trailer (for `tenetctl policy compile` and `inspect`). It is the
    /// right one when `key` and the digests are what the caller expects.
    pub fn recorded(&self, key: &str) -> Result<Trailer, String> {
        let path = self.path_for(key);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let len = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        Trailer::read(&file, len).map_err(|m| format!("{}: {m}", path.display()))
    }

    /// Publishes an artifact atomically (temp file, fsync, rename, fsync
    /// dir), with the trailer recording `key` and the module `digests` it
    /// was compiled from.
    pub fn store(&self, key: &str, cwasm: &[u8], digests: &[&str]) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let name = format!("{key}.cwasm");
        let mut bytes = Vec::with_capacity(cwasm.len() + 256);
        bytes.extend_from_slice(cwasm);
        Trailer::encode(key, digests, &mut bytes);
        publish(&self.dir, &name, &bytes)?;
        Ok(self.dir.join(name))
    }
}

/// Why an artifact was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// Missing, untrusted, corrupt, without a trailer, or from another
    /// engine: rebuild it.
    Miss(String),
    /// Its trailer records other modules than the ones asked for: a wrong
    /// or swapped file. Refused, never rebuilt over silently.
    Mismatch(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Miss(m) | LoadError::Mismatch(m) => f.write_str(m),
        }
    }
}

/// The record tenet appends to every artifact: the key it is stored under
/// and the sha256 of each module it was compiled from.
///
/// Layout, at the very end of the file: the payload (ASCII:
/// `tenet-artifact-1`, the key, then one digest per line), its length as a
/// little-endian `u32`, and the 8-byte [`TRAILER_MAGIC`]. It is read with
/// one `pread` of the file's last bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    /// The cache key (a module digest, or a bundle key).
    pub key: String,
    /// The modules' digests, in order.
    pub digests: Vec<String>,
}

/// Ends every artifact tenet writes.
pub const TRAILER_MAGIC: &[u8; 8] = b"TNTDGST1";
const TRAILER_HEADER: &str = "tenet-artifact-1";
/// Enough for a bundle of the largest pipeline (32 stages).
const TRAILER_MAX: usize = 4096;

impl Trailer {
    fn encode(key: &str, digests: &[&str], out: &mut Vec<u8>) {
        let mut payload = format!("{TRAILER_HEADER}\n{key}\n");
        for d in digests {
            payload.push_str(d);
            payload.push('\n');
        }
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(TRAILER_MAGIC);
    }

    /// Reads the trailer of an open artifact of `len` bytes.
    fn read(file: &std::fs::File, len: u64) -> Result<Trailer, String> {
        let tail = (TRAILER_MAX as u64 + 12).min(len) as usize;
        let mut buf = vec![0u8; tail];
        file.read_exact_at(&mut buf, len - tail as u64)
            .map_err(|e| format!("reading its trailer: {e}"))?;
        Self::parse(&buf)
    }

    /// Parses the trailer at the end of `tail` (the file's last bytes).
    fn parse(tail: &[u8]) -> Result<Trailer, String> {
        let none = || "no tenet trailer (not written by this tenet, or truncated)".to_string();
        let magic_at = tail.len().checked_sub(8).ok_or_else(none)?;
        if &tail[magic_at..] != TRAILER_MAGIC {
            return Err(none());
        }
        let len_at = magic_at.checked_sub(4).ok_or_else(none)?;
        let n = u32::from_le_bytes(tail[len_at..magic_at].try_into().expect("4 bytes")) as usize;
        let start = len_at.checked_sub(n).ok_or_else(none)?;
        let text = std::str::from_utf8(&tail[start..len_at]).map_err(|_| none())?;
        let mut lines = text.split_terminator('\n');
        if lines.next() != Some(TRAILER_HEADER) {
            return Err(none());
        }
        let key = lines.next().ok_or_else(none)?.to_owned();
        let digests: Vec<String> = lines.map(str::to_owned).collect();
        if digests.is_empty() {
            return Err(none());
        }
        Ok(Trailer { key, digests })
    }

    /// Whether this artifact is the one stored under `key` and compiled
    /// from exactly `digests`.
    pub fn check(&self, key: &str, digests: &[&str]) -> Result<(), String> {
        if self.key != key
            || self
                .digests
                .iter()
                .map(String::as_str)
                .ne(digests.iter().copied())
        {
            return Err(format!(
                "it records module sha256 {} (key {}), but {} was expected",
                self.digests.join(", "),
                self.key,
                digests.join(", ")
            ));
        }
        Ok(())
    }
}

/// Writes `dir/name` atomically: a private temp file, fsync, rename, fsync
/// the directory. Readers see the old file or the new one, never a part.
fn publish(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Identity of a module file as it is now: any rewrite, replacement or
/// touch changes it (inode, size, mtime and ctime), so a stale digest is
/// never used. The path is not part of it: (device, inode) already names the
/// file, and canonicalising the path cost a `readlink` per path component on
/// every exec.
pub(crate) fn file_key(m: &std::fs::Metadata) -> String {
    let id = format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    sha256_hex(id.as_bytes())
}

/// The key of data derived from one version of the file at `path`.
fn derived_key(path: &Path, meta: &std::fs::Metadata, kind: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut id = file_key(meta).into_bytes();
    id.push(0);
    id.extend_from_slice(path.as_os_str().as_bytes());
    format!("{}.{kind}", sha256_hex(&id))
}

/// Whether two metadata of a file describe the same version of it.
pub fn same_file_version(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    file_key(a) == file_key(b)
}

/// Refuses paths that someone other than us could have written.
fn check_trusted(path: &Path, dir: bool, euid: u32) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    check_trusted_meta(path, &meta, dir, euid)
}

/// [`check_trusted`] on metadata already at hand (of a file opened with
/// `O_NOFOLLOW`, or from `symlink_metadata`).
fn check_trusted_meta(
    path: &Path,
    meta: &std::fs::Metadata,
    dir: bool,
    euid: u32,
) -> Result<(), String> {
    let ok_type = if dir {
        meta.is_dir()
    } else {
        meta.file_type().is_file()
    };
    if !ok_type {
        return Err(format!(
            "{}: not a regular {}",
            path.display(),
            if dir { "directory" } else { "file" }
        ));
    }
    if meta.uid() != euid {
        return Err(format!(
            "{}: owned by uid {}, not {euid}; refusing to load native code from it",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {:o}); refusing to load native code from it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

/// Lower-case hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How a missing artifact gets built.
#[derive(Debug, Clone)]
pub enum Builder {
    /// Compile in this process (tenetctl, which links Cranelift).
    #[cfg(feature = "compiler")]
    InProcess,
    /// Run `<program> policy compile-module` (the CNI binary).
    External(PathBuf),
    /// Never build: a miss is "artifact unavailable".
    Never,
}

impl Builder {
    /// The default for this build: in-process with a compiler, else the
    /// `tenetctl` found next to the running executable or on PATH.
    pub fn default_for_build(configured: Option<&Path>) -> Self {
        #[cfg(feature = "compiler")]
        {
            let _ = configured;
            Builder::InProcess
        }
        #[cfg(not(feature = "compiler"))]
        {
            match configured.map(Path::to_owned).or_else(find_tenetctl) {
                Some(p) => Builder::External(p),
                None => Builder::Never,
            }
        }
    }

    /// Builds the artifact for `wasm` (whose digest is `sha256`) and returns
    /// the loaded component.
    pub fn build(
        &self,
        engine: &Engine,
        cache: &ArtifactCache,
        wasm: &Path,
        sha256: &str,
    ) -> Result<Component, String> {
        match self {
            #[cfg(feature = "compiler")]
            Builder::InProcess => {
                let bytes = std::fs::read(wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
                let cwasm = super::engine::precompile(engine, &bytes)
                    .map_err(|e| format!("compiling {}: {}", wasm.display(), e.root_cause()))?;
                match cache.store(sha256, &cwasm, &[sha256]) {
                    Ok(_) => {
                        let _ = cache.remember_digest(wasm, sha256);
                        cache
                            .load(engine, sha256, &[sha256])
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => {
                        // A read-only cache (an unprivileged `tenetctl plan`)
                        // must not stop a dry run: use the bytes directly.
                        tracing::debug!(cache = %cache.root().display(), error = %e, "artifact cache not writable; using in-memory artifact");
                        // SAFETY: bytes were just produced by this engine.
                        unsafe { Component::deserialize(engine, &cwasm) }
                            .map_err(|e| e.root_cause().to_string())
                    }
                }
            }
            Builder::External(program) => {
                run_compiler(program, cache, wasm, sha256)?;
                let _ = cache.remember_digest(wasm, sha256);
                cache
                    .load(engine, sha256, &[sha256])
                    .map_err(|e| e.to_string())
            }
            Builder::Never => Err("no compiler available to rebuild it".into()),
        }
    }
}

#[cfg(not(feature = "compiler"))]
fn find_tenetctl() -> Option<PathBuf> {
    let beside = std::env::current_exe().ok()?.parent()?.join("tenetctl");
    if beside.is_file() {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tenetctl"))
            .find(|p| p.is_file())
    })
}

fn run_compiler(
    program: &Path,
    cache: &ArtifactCache,
    wasm: &Path,
    sha256: &str,
) -> Result<(), String> {
    tracing::info!(compiler = %program.display(), module = %wasm.display(), "artifact missing; rebuilding it");
    let mut child = Command::new(program)
        .args(["policy", "compile-module", "--cache-dir"])
        .arg(cache.root())
        .arg("--sha256")
        .arg(sha256)
        .arg(wasm)
        .stdin(Stdio::null())
        // stdout belongs to the CNI protocol.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                return Err(format!(
                    "{} policy compile-module failed ({st})",
                    program.display()
                ));
            }
            Ok(None) if start.elapsed() > COMPILE_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} timed out after {COMPILE_TIMEOUT:?}",
                    program.display()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_lowercase_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn digest_index_follows_the_file_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(&tmp.path().join("c"));
        let wasm = tmp.path().join("m.wasm");
        std::fs::write(&wasm, b"one").unwrap();
        assert_eq!(cache.known_digest(&wasm), None);
        let d = sha256_hex(b"one");
        cache.remember_digest(&wasm, &d).unwrap();
        assert_eq!(cache.known_digest(&wasm).as_deref(), Some(d.as_str()));
        // Replacing the file (new inode/size/mtime) forgets the digest.
        std::fs::remove_file(&wasm).unwrap();
        std::fs::write(&wasm, b"other!").unwrap();
        assert_eq!(cache.known_digest(&wasm), None);
    }

    #[test]
    fn store_publishes_atomically_and_untrusted_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(&tmp.path().join("c"));
        let p = cache
            .store("ab", b"not really native code", &["ab"])
            .unwrap();
        assert!(
            std::fs::read(&p)
                .unwrap()
                .starts_with(b"not really native code")
        );
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        check_trusted(&p, false, euid).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(
            check_trusted(&p, false, euid)
                .unwrap_err()
                .contains("writable by group or others")
        );
        let engine = super::super::engine::new_engine().unwrap();
        assert!(matches!(
            cache.load(&engine, "ab", &["ab"]),
            Err(LoadError::Miss(m)) if m.contains("writable by group or others")
        ));
        let link = p.with_extension("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(
            check_trusted(&link, false, euid)
                .unwrap_err()
                .contains("not a regular file")
        );
        // A corrupt artifact is a miss with a reason, not a crash.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            cache.load(&engine, "ab", &["ab"]),
            Err(LoadError::Miss(_))
        ));
        assert!(
            cache
                .load(&engine, "cd", &["cd"])
                .unwrap_err()
                .to_string()
                .contains("cd.cwasm")
        );
    }

    /// The smallest component there is: `(component)`.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn artifacts_record_their_modules_and_a_swapped_one_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(&tmp.path().join("c"));
        let engine = super::super::engine::new_engine().unwrap();
        let cwasm = super::super::engine::precompile(&engine, EMPTY_COMPONENT).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        // wasmtime maps the file with the trailer after its bytes.
        cache.store(&a, &cwasm, &[&a]).unwrap();
        cache
            .load(&engine, &a, &[&a])
            .expect("loads with its trailer");
        let t = cache.recorded(&a).unwrap();
        assert_eq!((t.key, t.digests), (a.clone(), vec![a.clone()]));
        // Another module's artifact copied under a's name is refused.
        cache.store(&b, &cwasm, &[&b]).unwrap();
        std::fs::rename(cache.path_for(&b), cache.path_for(&a)).unwrap();
        match cache.load(&engine, &a, &[&a]) {
            Err(LoadError::Mismatch(m)) => assert!(m.contains(&b) && m.contains(&a), "{m}"),
            other => panic!("{other:?}"),
        }
        // A bundle records every stage, in order.
        cache.store("k", &cwasm, &[&a, &b]).unwrap();
        cache.load(&engine, "k", &[&a, &b]).unwrap();
        assert!(matches!(
            cache.load(&engine, "k", &[&b, &a]),
            Err(LoadError::Mismatch(_))
        ));
        // Without a trailer (wasmtime's bytes alone) it is a miss: rebuilt.
        publish(&cache.dir, &format!("{a}.cwasm"), &cwasm).unwrap();
        assert!(matches!(
            cache.load(&engine, &a, &[&a]),
            Err(LoadError::Miss(m)) if m.contains("no tenet trailer")
        ));
    }

    #[test]
    fn trailers_parse_only_when_whole() {
        let mut v = b"elf bytes".to_vec();
        Trailer::encode("k", &["d1", "d2"], &mut v);
        let t = Trailer::parse(&v).unwrap();
        assert_eq!((t.key.as_str(), t.digests.len()), ("k", 2));
        for cut in 1..v.len() - 9 {
            assert!(Trailer::parse(&v[..v.len() - cut]).is_err(), "cut {cut}");
        }
        assert!(Trailer::parse(b"").is_err());
        assert!(Trailer::parse(TRAILER_MAGIC).is_err());
        let mut lying = b"x".to_vec();
        lying.extend_from_slice(&u32::MAX.to_le_bytes());
        lying.extend_from_slice(TRAILER_MAGIC);
        assert!(Trailer::parse(&lying).is_err());
    }
}
