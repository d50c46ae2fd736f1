//! Pipeline manifests: which modules run, in which order, with which settings,
//! digests, budgets and failure policy (`policies/*.toml`).
//!
//! ```toml
//! [[stage]]
//! name = "tenant"            # unique; reported in errors and `tenetctl plan`
//! module = "tenant-map"      # a name looked up in the module dirs, or a path
//! sha256 = "…"               # optional pin; a module that differs is refused
//! failure = "fail"           # or "ignore": skip this stage when it fails
//! fuel = 10_000_000          # CPU budget (wasm instructions, roughly)
//! memory_mib = 16            # linear memory cap
//! timeout_ms = 100           # wall-clock deadline of one call
//! [stage.settings]           # the module's own settings, handed over as JSON
//! fromNamespace = true
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::ArtifactCache;

/// Default CPU budget per stage. A real policy call uses well under 1% of it;
/// an endless loop burns it in a few milliseconds.
pub const DEFAULT_FUEL: u64 = 10_000_000;
/// Upper bound an operator may configure for one stage.
pub const MAX_FUEL: u64 = 2_000_000_000;
/// Default linear-memory cap per stage.
pub const DEFAULT_MEMORY_MIB: u32 = 16;
/// Upper bound for `memory_mib`.
pub const MAX_MEMORY_MIB: u32 = 256;
/// Upper bound on stages in one pipeline.
pub const MAX_STAGES: usize = 32;
/// Upper bound on a stage's settings, as JSON.
pub const MAX_SETTINGS_BYTES: usize = 256 * 1024;
/// Default wall-clock deadline of one stage call. A real stage answers in
/// tens of microseconds; this only bounds what fuel does not measure.
pub const DEFAULT_STAGE_TIMEOUT_MS: u64 = 100;
/// Default wall-clock deadline of the whole pipeline (top-level
/// `timeout_ms`): no stage runs past it, whatever its own deadline.
pub const DEFAULT_PIPELINE_TIMEOUT_MS: u64 = 1000;
/// Upper bound for either deadline (a CNI runtime gives up on a plugin
/// long before).
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// What to do when a stage fails (trap, budget, missing artifact, invalid
/// plan). A `denied` verdict is a decision, not a failure: it is never ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Fail the CNI command (the default: tenant and addressing must not be skipped).
    #[default]
    Fail,
    /// Log and continue with the plan as it was before the stage.
    Ignore,
}

/// One stage as written in the manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    module: String,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    failure: FailurePolicy,
    #[serde(default)]
    fuel: Option<u64>,
    #[serde(default)]
    memory_mib: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    settings: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    stage: Vec<RawStage>,
}

/// Where a stage's module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModuleRef {
    /// A module name, looked up as `<dir>/<name>.wasm` in the module dirs.
    Named(String),
    /// An explicit path (relative paths are relative to the manifest).
    Path(PathBuf),
    /// A module published to an OCI registry, pinned by manifest digest
    /// (`oci://registry/repo@sha256:…`). Resolved from the module dirs as
    /// `oci-sha256-<hex>.wasm`, written by `tenetctl policy pull`; never
    /// fetched by the CNI exec (see `policy::oci`).
    Oci(super::oci::OciRef),
}

impl std::fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleRef::Named(n) => write!(f, "{n}"),
            ModuleRef::Path(p) => write!(f, "{}", p.display()),
            ModuleRef::Oci(r) => write!(f, "{r}"),
        }
    }
}

/// A validated stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Unique stage name.
    pub name: String,
    /// The module to run.
    pub module: ModuleRef,
    /// Pinned sha256 of the module (lower-case hex), if any.
    pub sha256: Option<String>,
    /// Failure policy.
    pub failure: FailurePolicy,
    /// CPU budget.
    pub fuel: u64,
    /// Linear memory cap in bytes.
    pub memory_bytes: usize,
    /// Wall-clock deadline of one call, in milliseconds.
    pub timeout_ms: u64,
    /// Settings as a JSON document ("" when none).
    pub settings: String,
}

/// A validated pipeline manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file it was read from.
    pub path: PathBuf,
    /// Free-form description.
    pub description: Option<String>,
    /// Wall-clock deadline of a whole run, in milliseconds.
    pub timeout_ms: u64,
    /// Stages in order.
    pub stages: Vec<StageSpec>,
}

/// A manifest that cannot be used; the message names the file and field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ManifestError {
    /// The manifest file.
    pub path: PathBuf,
    /// What is wrong, naming the field.
    pub message: String,
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            path: path.to_owned(),
            message: format!("cannot read pipeline manifest: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// [`Self::load`] through a parsed copy kept in the artifact cache for
    /// this exact file (its path and identity: device, inode, size, mtime,
    /// ctime), so a pod's exec does not parse TOML: that cost ~150 µs per
    /// exec on the reference VM, as much as a stage. The copy is the
    /// validated result, written on the first load of each version of the
    /// file (best effort) and read under the cache's trust rules.
    pub fn load_cached(path: &Path, cache: &ArtifactCache) -> Result<Self, ManifestError> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Self::load(path);
        };
        if let Some(m) = cache
            .derived(path, &meta, "manifest")
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            .filter(|m| m.path == path)
        {
            return Ok(m);
        }
        let m = Self::load(path)?;
        // Only if the file did not change while it was read.
        if std::fs::metadata(path).is_ok_and(|now| super::cache::same_file_version(&now, &meta))
            && let Ok(json) = serde_json::to_vec(&m)
            && let Err(e) = cache.remember_derived(path, &meta, "manifest", &json)
        {
            tracing::debug!(error = %e, "parsed manifest not cached");
        }
        Ok(m)
    }

    /// Parses and validates manifest text; `path` is used for messages and to
    /// resolve relative module paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let err = |message: String| ManifestError {
            path: path.to_owned(),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| err(one_line(&e.to_string())))?;
        if raw.stage.len() > MAX_STAGES {
            return Err(err(format!(
                "stage: {} stages, at most {MAX_STAGES} allowed",
                raw.stage.len()
            )));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut stages: Vec<StageSpec> = Vec::with_capacity(raw.stage.len());
        for (i, s) in raw.stage.into_iter().enumerate() {
            let at = |field: &str| format!("stage[{i}].{field}");
            if !valid_stage_name(&s.name) {
                return Err(err(format!(
                    "{}: {:?} is not a valid stage name (1-63 of [a-z0-9-], starting with a letter or digit)",
                    at("name"),
                    s.name
                )));
            }
            if stages.iter().any(|p| p.name == s.name) {
                return Err(err(format!(
                    "{}: duplicate stage name {:?}",
                    at("name"),
                    s.name
                )));
            }
            let module = parse_module_ref(base, &s.module)
                .map_err(|m| err(format!("{} ({}): {m}", at("module"), s.name)))?;
            let sha256 = match s.sha256 {
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(h.to_ascii_lowercase())
                }
                Some(h) => {
                    return Err(err(format!(
                        "{} ({}): {h:?} is not 64 hex digits",
                        at("sha256"),
                        s.name
                    )));
                }
                None => None,
            };
            let fuel = s.fuel.unwrap_or(DEFAULT_FUEL);
            if fuel == 0 || fuel > MAX_FUEL {
                return Err(err(format!(
                    "{} ({}): {fuel} is outside 1..={MAX_FUEL}",
                    at("fuel"),
                    s.name
                )));
            }
            let memory_mib = s.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
            if memory_mib == 0 || memory_mib > MAX_MEMORY_MIB {
                return Err(err(format!(
                    "{} ({}): {memory_mib} is outside 1..={MAX_MEMORY_MIB}",
                    at("memory_mib"),
                    s.name
                )));
            }
            let timeout_ms = s.timeout_ms.unwrap_or(DEFAULT_STAGE_TIMEOUT_MS);
            if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
                return Err(err(format!(
                    "{} ({}): {timeout_ms} is outside 1..={MAX_TIMEOUT_MS}",
                    at("timeout_ms"),
                    s.name
                )));
            }
            let settings = match s.settings {
                Some(t) => serde_json::to_string(&t)
                    .map_err(|e| err(format!("{} ({}): {e}", at("settings"), s.name)))?,
                None => String::new(),
            };
            if settings.len() > MAX_SETTINGS_BYTES {
                return Err(err(format!(
                    "{} ({}): {} bytes as JSON, at most {MAX_SETTINGS_BYTES}",
                    at("settings"),
                    s.name,
                    settings.len()
                )));
            }
            stages.push(StageSpec {
                name: s.name,
                module,
                sha256,
                failure: s.failure,
                fuel,
                memory_bytes: memory_mib as usize * 1024 * 1024,
                timeout_ms,
                settings,
            });
        }
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_PIPELINE_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            return Err(err(format!(
                "timeout_ms: {timeout_ms} is outside 1..={MAX_TIMEOUT_MS}"
            )));
        }
        Ok(Manifest {
            path: path.to_owned(),
            description: raw.description,
            timeout_ms,
            stages,
        })
    }
}

/// toml errors span several lines with a source excerpt; a CNI error message
/// reads better on one.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .collect::<Vec<_>>()
        .join(": ")
}

fn valid_stage_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn parse_module_ref(base: &Path, s: &str) -> Result<ModuleRef, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.starts_with(super::oci::SCHEME) {
        let r = super::oci::OciRef::parse(s)?;
        if r.digest.is_none() {
            // A tag can be moved to other content: what runs must not
            // change behind the pipeline's back.
            return Err(format!(
                "{s:?} names a tag; a pipeline takes an OCI module by digest only \
                 (oci://{}@sha256:…, as printed by `tenetctl policy push` or `tenetctl policy pull`)",
                r.repo_name()
            ));
        }
        return Ok(ModuleRef::Oci(r));
    }
    if s.contains('/') || s.ends_with(".wasm") {
        let p = Path::new(s);
        return Ok(ModuleRef::Path(if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }));
    }
    if valid_stage_name(s) {
        Ok(ModuleRef::Named(s.to_owned()))
    } else {
        Err(format!(
            "{s:?} is neither a module name ([a-z0-9-]) nor a path to a .wasm file"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("/etc/tenet/p.toml"), text)
    }

    #[test]
    fn a_cached_parse_is_used_for_the_same_file_only() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::new(&tmp.path().join("cache"));
        let path = tmp.path().join("p.toml");
        let text = "[[stage]]\nname = \"t\"\nmodule = \"tenant-map\"\n[stage.settings]\nx = 1\n";
        std::fs::write(&path, text).unwrap();
        let first = Manifest::load_cached(&path, &cache).unwrap();
        assert_eq!(first, Manifest::load(&path).unwrap());
        let meta = std::fs::metadata(&path).unwrap();
        let kept = cache
            .derived(&path, &meta, "manifest")
            .expect("parsed copy kept");
        // The next load is the kept copy: prove it by doctoring the copy.
        let mut doctored = first.clone();
        doctored.description = Some("from the cache".into());
        cache
            .remember_derived(
                &path,
                &meta,
                "manifest",
                &serde_json::to_vec(&doctored).unwrap(),
            )
            .unwrap();
        assert_eq!(Manifest::load_cached(&path, &cache).unwrap(), doctored);
        // Any edit of the file is a new version: parsed again.
        std::fs::write(&path, text.replace("x = 1", "x = 2")).unwrap();
        let edited = Manifest::load_cached(&path, &cache).unwrap();
        assert_eq!(edited.stages[0].settings, r#"{"x":2}"#);
        assert_eq!(edited.description, None);
        // The same content at another path is another entry (relative
        // module paths resolve against the manifest's directory).
        let other = tmp.path().join("q.toml");
        std::fs::copy(&path, &other).unwrap();
        assert_eq!(Manifest::load_cached(&other, &cache).unwrap().path, other);
        // A kept copy others could have written is ignored.
        let meta = std::fs::metadata(&path).unwrap();
        let entry = std::fs::read_dir(
            tmp.path()
                .join("cache")
                .join(super::super::engine::profile_id())
                .join("by-file"),
        )
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                .is_some_and(|m| m.path == path && m.stages[0].settings == r#"{"x":2}"#)
        })
        .expect("entry of the edited file");
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(cache.derived(&path, &meta, "manifest").is_none());
        assert!(!kept.is_empty());
    }

    #[test]
    fn full_stage_is_parsed_with_settings_as_json() {
        let m = parse(
            r#"
            description = "demo"
            [[stage]]
            name = "tenant"
            module = "tenant-map"
            sha256 = "AB00000000000000000000000000000000000000000000000000000000000001"
            failure = "ignore"
            fuel = 5000
            memory_mib = 8
            timeout_ms = 20
            [stage.settings]
            denyUnknown = true
            map = { "team-a" = "acme" }
            [[stage]]
            name = "ipam"
            module = "../modules/ipam.wasm"
            "#,
        )
        .unwrap();
        assert_eq!(m.stages.len(), 2);
        let t = &m.stages[0];
        assert_eq!(t.module, ModuleRef::Named("tenant-map".into()));
        assert_eq!(t.sha256.as_deref().unwrap()[..4], *"ab00");
        assert_eq!(t.failure, FailurePolicy::Ignore);
        assert_eq!((t.fuel, t.memory_bytes, t.timeout_ms), (5000, 8 << 20, 20));
        assert_eq!(m.timeout_ms, DEFAULT_PIPELINE_TIMEOUT_MS);
        let v: serde_json::Value = serde_json::from_str(&t.settings).unwrap();
        assert_eq!(v["map"]["team-a"], "acme");
        assert_eq!(v["denyUnknown"], true);
        let i = &m.stages[1];
        assert_eq!(
            i.module,
            ModuleRef::Path(PathBuf::from("/etc/tenet/../modules/ipam.wasm"))
        );
        assert_eq!(
            (i.fuel, i.failure, i.settings.as_str(), i.timeout_ms),
            (
                DEFAULT_FUEL,
                FailurePolicy::Fail,
                "",
                DEFAULT_STAGE_TIMEOUT_MS
            )
        );
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let cases = [
            (
                "[[stage]]\nname = \"a\"\nmodule = \"m\"\nfule = 3\n",
                "fule",
            ),
            (
                "[[stage]]\nname = \"A b\"\nmodule = \"m\"\n",
                "stage[0].name",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"m\"\nsha256 = \"xyz\"\n",
                "stage[0].sha256",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"m\"\nfuel = 0\n",
                "stage[0].fuel",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"m\"\nmemory_mib = 4096\n",
                "stage[0].memory_mib",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"M!\"\n",
                "stage[0].module",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"m\"\n[[stage]]\nname = \"a\"\nmodule = \"n\"\n",
                "stage[1].name",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"m\"\nfailure = \"maybe\"\n",
                "maybe",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"m\"\ntimeout_ms = 0\n",
                "stage[0].timeout_ms",
            ),
            ("timeout_ms = 600000\n", "timeout_ms"),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"oci://r.example/q:v1\"\n",
                "stage[0].module (a): \"oci://r.example/q:v1\" names a tag",
            ),
            (
                "[[stage]]\nname = \"a\"\nmodule = \"oci://r.example/q@sha256:12\"\n",
                "stage[0].module",
            ),
        ];
        for (text, field) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with("/etc/tenet/p.toml: "), "{e}");
            assert!(e.contains(field), "{field} not in {e}");
            assert!(!e.contains('\n'), "multi-line error: {e}");
        }
    }

    #[test]
    fn oci_digest_references_are_modules() {
        let d = "ab".repeat(32);
        let m = parse(&format!(
            "[[stage]]\nname = \"q\"\nmodule = \"oci://127.0.0.1:5000/team/q@sha256:{d}\"\n"
        ))
        .unwrap();
        let ModuleRef::Oci(r) = &m.stages[0].module else {
            panic!("{:?}", m.stages[0].module)
        };
        assert_eq!(r.file_name().unwrap(), format!("oci-sha256-{d}.wasm"));
        assert_eq!(
            m.stages[0].module.to_string(),
            format!("oci://127.0.0.1:5000/team/q@sha256:{d}")
        );
    }

    #[test]
    fn empty_manifest_is_an_empty_pipeline() {
        assert!(parse("").unwrap().stages.is_empty());
    }
}
