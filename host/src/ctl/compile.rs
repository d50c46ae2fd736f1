//! `tenetctl policy compile` (precompile a pipeline's modules into the cache
//! and validate their settings, as an installer or node agent does) and the
//! internal `compile-module` that the CNI binary runs on a cache miss.
//!
//! Pins cover what runs: before anything is compiled, every pinned stage's
//! module file and cached artifact are checked against its pin, and any
//! difference is an error naming the stage, the pin and the digests found,
//! so that re-pinning from this command's output never blesses a changed
//! file. `--pin` is the deliberate way to (re)pin: it writes each module
//! file's digest into the pipeline file, keeping its comments and layout.
//!
//! `oci://…@sha256:…` stages whose module no module dir holds are pulled
//! first, into the first module dir, with `[distribution] verify_key`
//! (ctl/oci).

use std::path::{Path, PathBuf};

use super::{CtlError, ModuleArgs, load_pipeline};
use crate::policy::cache::{ArtifactCache, sha256_file};
use crate::policy::{FailurePolicy, Manifest, engine};

/// Arguments of `tenetctl policy compile`.
#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// The pipeline manifest whose modules to precompile.
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
    /// Write each stage's module digest into the pipeline file as its
    /// `sha256` pin (comments and layout kept), then compile.
    #[arg(long)]
    pub pin: bool,
    #[command(flatten)]
    pub modules: ModuleArgs,
}

/// Arguments of `tenetctl policy compile-module` (used by `tenet` itself).
#[derive(Debug, clap::Args)]
pub struct CompileModuleArgs {
    /// Artifact cache root.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: PathBuf,
    /// Expected sha256 of the module; a module that differs is refused.
    #[arg(long)]
    pub sha256: Option<String>,
    /// The module.
    pub wasm: PathBuf,
}

/// One stage's module file, as found now.
struct Found {
    stage: String,
    pin: Option<String>,
    /// The module file and its digest, when the file exists.
    file: Option<(PathBuf, String)>,
}

/// Every stage's module file and digest.
fn find_modules(manifest: &Manifest, dirs: &[PathBuf]) -> Result<Vec<Found>, CtlError> {
    manifest
        .stages
        .iter()
        .map(|s| {
            let file = match crate::policy::resolve_module_path(&s.module, dirs) {
                Ok(p) => {
                    let d = sha256_file(&p)
                        .map_err(|e| CtlError::Message(format!("{}: {e}", p.display())))?;
                    Some((p, d))
                }
                Err(_) if s.sha256.is_some() => None,
                Err(m) => return Err(CtlError::Message(format!("stage {:?}: {m}", s.name))),
            };
            Ok(Found {
                stage: s.name.clone(),
                pin: s.sha256.clone(),
                file,
            })
        })
        .collect()
}

/// The differences between the pins and what the files and the cache hold.
fn pin_mismatches(found: &[Found], cache: &ArtifactCache) -> Vec<String> {
    let mut problems = Vec::new();
    for f in found {
        let want = match (&f.pin, &f.file) {
            (Some(pin), Some((path, d))) if d != pin => {
                problems.push(format!(
                    "stage {:?}: pinned sha256 {pin}, but module file {} has sha256 {d}",
                    f.stage,
                    path.display()
                ));
                pin
            }
            (Some(pin), _) => pin,
            (None, Some((_, d))) => d,
            (None, None) => continue,
        };
        // A cached artifact must record the module it is stored for (one
        // without a readable record is rebuilt by the load below).
        if cache.path_for(want).is_file()
            && let Ok(recorded) = cache.recorded(want)
            && recorded.check(want, &[want]).is_err()
        {
            problems.push(format!(
                "stage {:?}: {} sha256 {want}, but its cached artifact {} records sha256 {}",
                f.stage,
                if f.pin.is_some() { "pinned" } else { "module" },
                cache.path_for(want).display(),
                recorded.digests.join(", ")
            ));
        }
    }
    problems
}

/// Precompiles every stage of a pipeline and validates its settings.
pub fn run(args: &CompileArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let opts = args.modules.options()?;
    compile_pipeline(&args.pipeline, args.pin, &opts, None, out)?;
    Ok(0)
}

/// What [`compile_pipeline`] made ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Each stage's module file and its digest (unpinned stages whose file
    /// exists).
    pub modules: Vec<(PathBuf, String)>,
    /// The bundle artifact, when the stages compose into one.
    pub bundle: Option<PathBuf>,
    /// How many stages the pipeline has.
    pub stages: usize,
}

/// `tenetctl policy compile` with explicit options (the node agent's
/// upkeep runs this too): checks the pins, builds every missing artifact
/// and the bundle into the cache, validates the settings, and reports on
/// `out`.
///
/// `dist` is the `[distribution]` configuration missing `oci://` modules are
/// pulled with (the node agent passes its own configuration's); `None` reads
/// it from the process's configuration (`TENET_CONFIG`), only when something
/// must be pulled.
pub fn compile_pipeline(
    path: &Path,
    pin: bool,
    opts: &crate::policy::PipelineOptions,
    dist: Option<&crate::config::DistributionConfig>,
    out: &mut dyn std::io::Write,
) -> Result<Compiled, CtlError> {
    let cache = ArtifactCache::new(&opts.cache_dir);
    let manifest = Manifest::load(path).map_err(CtlError::from_err)?;
    // `oci://` modules no module dir has yet are pulled (signature checked)
    // into the first module dir, where `tenet` will look for them.
    // The configuration (its [distribution] key) is read only when there is
    // something to pull, so a pipeline without missing `oci://` modules
    // compiles whatever TENET_CONFIG holds.
    let missing_oci = manifest.stages.iter().any(|s| {
        matches!(s.module, crate::policy::ModuleRef::Oci(_))
            && crate::policy::resolve_module_path(&s.module, &opts.module_dirs).is_err()
    });
    if missing_oci && let Some(dest) = opts.module_dirs.first() {
        let loaded;
        let dist = match dist {
            Some(d) => d,
            None => {
                loaded = crate::config::Config::load(&super::process_env(), None)
                    .map_err(CtlError::from_err)?;
                &loaded.distribution
            }
        };
        super::oci::pull_missing(&manifest, &opts.module_dirs, dest, dist, out)?;
    }
    let found = find_modules(&manifest, &opts.module_dirs)?;
    if pin {
        write_pins(path, &found)?;
    } else {
        let problems = pin_mismatches(&found, &cache);
        if !problems.is_empty() {
            return Err(CtlError::Message(format!(
                "{}: pins do not match what would run (nothing compiled; re-pin deliberately with --pin once the modules are the ones you mean to run):\n  {}",
                path.display(),
                problems.join("\n  ")
            )));
        }
    }
    // Loading builds every missing artifact into the cache (in-process
    // compiler) and refuses modules with forbidden imports or wrong digests.
    let (manifest, pipeline) = load_pipeline(path, opts)?;
    // Settings against each module's schema first (errors name the field),
    // then the modules' own checks.
    crate::policy::metadata::check_manifest(&manifest, &opts.module_dirs)
        .map_err(|e| CtlError::Message(format!("{}: {e}", path.display())))?;
    pipeline
        .validate_settings()
        .map_err(|e| CtlError::Message(format!("{}: {e}", path.display())))?;
    for spec in &manifest.stages {
        let digest = match (&spec.sha256, found.iter().find(|f| f.stage == spec.name)) {
            (Some(pin), _) => pin.clone(),
            (
                None,
                Some(Found {
                    file: Some((_, d)), ..
                }),
            ) => d.clone(),
            _ => continue,
        };
        // What runs is what the artifact records: check it once more.
        cache
            .recorded(&digest)
            .and_then(|t| t.check(&digest, &[&digest]))
            .map_err(|m| CtlError::Message(format!("stage {:?}: {m}", spec.name)))?;
        writeln!(
            out,
            "{:<16} sha256={digest} artifact={}{}",
            spec.name,
            cache.path_for(&digest).display(),
            if spec.sha256.is_some() {
                " (pinned)"
            } else {
                ""
            }
        )
        .map_err(CtlError::from_err)?;
    }
    // Loading also composed the stages into one bundle artifact (one file
    // to map per exec instead of one per stage).
    match pipeline.bundle_artifact() {
        Some(path) => writeln!(out, "{:<16} artifact={}", "(bundle)", path.display()),
        None if manifest.stages.len() > 1 => writeln!(
            out,
            "{:<16} none: stages load one by one (see the log)",
            "(bundle)"
        ),
        None => Ok(()),
    }
    .map_err(CtlError::from_err)?;
    for spec in manifest
        .stages
        .iter()
        .filter(|s| s.failure == FailurePolicy::Ignore)
    {
        writeln!(
            out,
            "note: stage {:?} has failure = \"ignore\": whenever it traps, runs out of budget or returns an invalid plan (which pod input can cause) it is skipped, so a denial it would have made does not happen (docs/security.md)",
            spec.name
        )
        .map_err(CtlError::from_err)?;
    }
    writeln!(
        out,
        "settings valid; {} stages ready",
        manifest.stages.len()
    )
    .map_err(CtlError::from_err)?;
    Ok(Compiled {
        modules: found.into_iter().filter_map(|f| f.file).collect(),
        bundle: pipeline.bundle_artifact(),
        stages: manifest.stages.len(),
    })
}

/// Writes each stage's module file digest into the pipeline file as its
/// `sha256` key, keeping everything else of the file as it is.
fn write_pins(pipeline: &Path, found: &[Found]) -> Result<(), CtlError> {
    let text = std::fs::read_to_string(pipeline)
        .map_err(|e| CtlError::Message(format!("{}: {e}", pipeline.display())))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| CtlError::Message(format!("{}: {e}", pipeline.display())))?;
    let stages = doc
        .get_mut("stage")
        .and_then(|s| s.as_array_of_tables_mut())
        .ok_or_else(|| CtlError::Message(format!("{}: no [[stage]] to pin", pipeline.display())))?;
    for (table, f) in stages.iter_mut().zip(found) {
        let Some((path, digest)) = &f.file else {
            return Err(CtlError::Message(format!(
                "stage {:?}: its module file is missing, so there is nothing to pin (pinned {})",
                f.stage,
                f.pin.as_deref().unwrap_or("-")
            )));
        };
        match table.get_mut("sha256").and_then(|i| i.as_value_mut()) {
            Some(v) => {
                // Keep the comment and spacing around the old value.
                let decor = v.decor().clone();
                *v = toml_edit::Value::from(digest.as_str());
                *v.decor_mut() = decor;
            }
            None => {
                table.insert("sha256", toml_edit::value(digest.as_str()));
            }
        }
        tracing::info!(stage = %f.stage, module = %path.display(), %digest, "pinned");
    }
    // Published by rename, with the file's mode.
    let tmp = pipeline.with_extension("toml.pin-tmp");
    let mode = std::fs::metadata(pipeline).map(|m| m.permissions());
    std::fs::write(&tmp, doc.to_string())
        .and_then(|()| match mode {
            Ok(m) => std::fs::set_permissions(&tmp, m),
            Err(_) => Ok(()),
        })
        .and_then(|()| std::fs::rename(&tmp, pipeline))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            CtlError::Message(format!("{}: {e}", pipeline.display()))
        })
}

/// Compiles one module into the cache.
pub fn run_module(args: &CompileModuleArgs) -> Result<i32, CtlError> {
    let bytes = std::fs::read(&args.wasm)
        .map_err(|e| CtlError::Message(format!("{}: {e}", args.wasm.display())))?;
    // The digest of the very bytes compiled (not of a second read).
    let digest = crate::policy::cache::sha256_hex(&bytes);
    if let Some(want) = &args.sha256
        && !want.eq_ignore_ascii_case(&digest)
    {
        return Err(CtlError::Message(format!(
            "{} has sha256 {digest}, expected {want}",
            args.wasm.display()
        )));
    }
    let eng = engine::new_engine().map_err(CtlError::from_err)?;
    let cwasm = engine::precompile(&eng, &bytes)
        .map_err(|e| CtlError::Message(format!("{}: {}", args.wasm.display(), e.root_cause())))?;
    let cache = ArtifactCache::new(&args.cache_dir);
    cache
        .store(&digest, &cwasm, &[&digest])
        .map_err(|e| CtlError::Message(format!("{}: {e}", args.cache_dir.display())))?;
    // Lets `tenet` find this unpinned module's artifact without hashing it.
    cache
        .remember_digest(&args.wasm, &digest)
        .map_err(|e| CtlError::Message(format!("{}: {e}", args.cache_dir.display())))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_written_keeping_comments_and_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("p.toml");
        let text = "# my pipeline\n[[stage]]\nname = \"a\"  # first\nmodule = \"m\"\nsha256 = \"old\" # keep me\n[stage.settings]\nx = 1 # setting\n\n[[stage]]\nname = \"b\"\nmodule = \"n\"\n";
        std::fs::write(&p, text).unwrap();
        let found = vec![
            Found {
                stage: "a".into(),
                pin: None,
                file: Some(("m.wasm".into(), "1".repeat(64))),
            },
            Found {
                stage: "b".into(),
                pin: None,
                file: Some(("n.wasm".into(), "2".repeat(64))),
            },
        ];
        write_pins(&p, &found).unwrap();
        let out = std::fs::read_to_string(&p).unwrap();
        for kept in ["# my pipeline", "# first", "# keep me", "x = 1 # setting"] {
            assert!(out.contains(kept), "{kept}: {out}");
        }
        assert!(
            out.contains(&format!("sha256 = \"{}\" # keep me", "1".repeat(64))),
            "{out}"
        );
        let m = Manifest::parse(&p, &out).unwrap();
        assert_eq!(m.stages[1].sha256.as_deref(), Some("2".repeat(64).as_str()));
        assert_eq!(m.stages[0].settings, r#"{"x":1}"#);
    }
}
