//! `tenetctl policy compile` (precompile a pipeline's modules into the cache
//! and validate their settings, as an installer or node agent does) and the
//! internal `compile-module` that the CNI binary runs on a cache miss.

use std::path::PathBuf;

use super::{CtlError, ModuleArgs, load_pipeline};
use crate::policy::cache::{ArtifactCache, sha256_file};
use crate::policy::engine;

/// Arguments of `tenetctl policy compile`.
#[derive(Debug, clap::Args)]
pub struct CompileArgs {
    /// The pipeline manifest whose modules to precompile.
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
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

/// Precompiles every stage of a pipeline and validates its settings.
pub fn run(args: &CompileArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let opts = args.modules.options()?;
    // Loading builds every missing artifact into the cache (in-process
    // compiler) and refuses modules with forbidden imports or wrong digests.
    let (manifest, pipeline) = load_pipeline(&args.pipeline, &opts)?;
    // Settings against each module's schema first (errors name the field),
    // then the modules' own checks.
    crate::policy::metadata::check_manifest(&manifest, &opts.module_dirs)
        .map_err(|e| CtlError(format!("{}: {e}", args.pipeline.display())))?;
    pipeline
        .validate_settings()
        .map_err(|e| CtlError(format!("{}: {e}", args.pipeline.display())))?;
    let cache = ArtifactCache::new(&opts.cache_dir);
    for spec in &manifest.stages {
        let wasm = crate::policy::resolve_module_path(&spec.module, &opts.module_dirs)
            .map_err(CtlError)?;
        let digest =
            sha256_file(&wasm).map_err(|e| CtlError(format!("{}: {e}", wasm.display())))?;
        writeln!(
            out,
            "{:<16} sha256={digest} artifact={}",
            spec.name,
            cache.path_for(&digest).display()
        )
        .map_err(CtlError::msg)?;
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
    .map_err(CtlError::msg)?;
    writeln!(
        out,
        "settings valid; {} stages ready",
        manifest.stages.len()
    )
    .map_err(CtlError::msg)?;
    Ok(0)
}

/// Compiles one module into the cache.
pub fn run_module(args: &CompileModuleArgs) -> Result<i32, CtlError> {
    let digest =
        sha256_file(&args.wasm).map_err(|e| CtlError(format!("{}: {e}", args.wasm.display())))?;
    if let Some(want) = &args.sha256
        && !want.eq_ignore_ascii_case(&digest)
    {
        return Err(CtlError(format!(
            "{} has sha256 {digest}, expected {want}",
            args.wasm.display()
        )));
    }
    let bytes =
        std::fs::read(&args.wasm).map_err(|e| CtlError(format!("{}: {e}", args.wasm.display())))?;
    let eng = engine::new_engine().map_err(CtlError::msg)?;
    let cwasm = engine::precompile(&eng, &bytes)
        .map_err(|e| CtlError(format!("{}: {}", args.wasm.display(), e.root_cause())))?;
    let cache = ArtifactCache::new(&args.cache_dir);
    cache
        .store(&digest, &cwasm)
        .map_err(|e| CtlError(format!("{}: {e}", args.cache_dir.display())))?;
    // Lets `tenet` find this unpinned module's artifact without hashing it.
    cache
        .remember_digest(&args.wasm, &digest)
        .map_err(|e| CtlError(format!("{}: {e}", args.cache_dir.display())))?;
    Ok(0)
}
