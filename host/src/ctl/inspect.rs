//! `tenetctl policy inspect`: what a module is — its world (imports and
//! exports), digest, size, whether tenet would accept it, and whether a
//! precompiled artifact is in the cache.

use std::path::PathBuf;

use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::{CtlError, ModuleArgs};
use crate::policy::cache::{ArtifactCache, sha256_hex};
use crate::policy::{ALLOWED_IMPORTS, ModuleRef, engine};

/// Arguments of `tenetctl policy inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A module name (looked up in the module dirs) or a path to a .wasm.
    pub module: String,
    #[command(flatten)]
    pub modules: ModuleArgs,
}

fn describe(item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentFunc(f) => {
            let params: Vec<String> = f
                .params()
                .map(|(n, t)| format!("{n}: {}", type_name(&t)))
                .collect();
            let results: Vec<String> = f.results().map(|t| type_name(&t)).collect();
            format!(
                "func({}) -> {}",
                params.join(", "),
                if results.is_empty() {
                    "()".into()
                } else {
                    results.join(", ")
                }
            )
        }
        ComponentItem::ComponentInstance(_) => "instance".into(),
        ComponentItem::CoreFunc(_) => "core func".into(),
        ComponentItem::Module(_) => "core module".into(),
        ComponentItem::Component(_) => "component".into(),
        ComponentItem::Type(_) => "type".into(),
        ComponentItem::Resource(_) => "resource".into(),
    }
}

fn type_name(t: &wasmtime::component::types::Type) -> String {
    use wasmtime::component::types::Type;
    match t {
        Type::Record(_) => "record".into(),
        Type::Variant(_) => "variant".into(),
        Type::Result(_) => "result".into(),
        Type::Option(_) => "option".into(),
        Type::List(_) => "list".into(),
        Type::Enum(_) => "enum".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Runs `tenetctl policy inspect`.
pub fn run(args: &InspectArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let opts = args.modules.options()?;
    let module = if args.module.contains('/') || args.module.ends_with(".wasm") {
        ModuleRef::Path(PathBuf::from(&args.module))
    } else {
        ModuleRef::Named(args.module.clone())
    };
    let path = crate::policy::resolve_module_path(&module, &opts.module_dirs)
        .map_err(CtlError::Message)?;
    let bytes =
        std::fs::read(&path).map_err(|e| CtlError::Message(format!("{}: {e}", path.display())))?;
    let digest = sha256_hex(&bytes);
    let eng = engine::new_engine().map_err(CtlError::from_err)?;
    let component = Component::new(&eng, &bytes).map_err(|e| {
        CtlError::Message(format!(
            "{}: not a valid component: {}",
            path.display(),
            e.root_cause()
        ))
    })?;
    let ty = component.component_type();
    let mut w = |s: String| writeln!(out, "{s}").map_err(CtlError::from_err);
    w(format!("module   {}", path.display()))?;
    w(format!("size     {} bytes", bytes.len()))?;
    w(format!("sha256   {digest}"))?;
    w("imports".into())?;
    let mut refused = Vec::new();
    for (name, item) in ty.imports(&eng) {
        let ok = ALLOWED_IMPORTS.contains(&name);
        if !ok {
            refused.push(name.to_owned());
        }
        w(format!(
            "  {name}: {}{}",
            describe(&item.ty),
            if ok { "" } else { "   <- NOT ALLOWED" }
        ))?;
    }
    w("exports".into())?;
    for (name, item) in ty.exports(&eng) {
        w(format!("  {name}: {}", describe(&item.ty)))?;
    }
    match crate::policy::metadata::read(&bytes) {
        Ok(Some(m)) => {
            w(format!("name     {} {}", m.name, m.version))?;
            if !m.description.is_empty() {
                w(format!("about    {}", m.description))?;
            }
            if !m.authors.is_empty() {
                w(format!("authors  {}", m.authors.join(", ")))?;
            }
            w(format!(
                "built    SDK {}, {}",
                m.sdk.as_deref().unwrap_or("?"),
                m.wit.as_deref().unwrap_or("?")
            ))?;
            match &m.settings_schema {
                Some(schema) => w(format!(
                    "settings schema\n{}",
                    serde_json::to_string_pretty(schema).map_err(CtlError::from_err)?
                ))?,
                None => {
                    w("settings schema: none (settings are checked by the module only)".into())?
                }
            }
        }
        Ok(None) => w(
            "metadata none (not built with export_stage!: no name, version or settings schema)"
                .into(),
        )?,
        Err(e) => w(format!("metadata INVALID: {e}"))?,
    }
    let cache = ArtifactCache::new(&opts.cache_dir);
    let cached = cache.path_for(&digest);
    // The artifact runs only if it records this module (cache.rs).
    let mut mismatch = None;
    let status = if !cached.exists() {
        "absent: run tenetctl policy compile".to_string()
    } else {
        match cache.recorded(&digest) {
            Ok(t) if t.check(&digest, &[&digest]).is_ok() => "present, records this module".into(),
            Ok(t) => {
                mismatch = Some(t.digests.join(", "));
                format!("MISMATCH: records sha256 {}", t.digests.join(", "))
            }
            Err(m) => format!("unusable, will be rebuilt: {m}"),
        }
    };
    w(format!("artifact {} ({status})", cached.display()))?;
    if let Some(d) = mismatch {
        w(format!(
            "verdict  REFUSED: the cached artifact for this module records sha256 {d}"
        ))?;
        return Ok(1);
    }
    // Named imports refused are reported below; otherwise the imports must
    // also type-check against what tenet provides.
    if refused.is_empty()
        && let Err(m) = crate::policy::check_module(&eng, &component)
    {
        w(format!("verdict  REFUSED: {m}"))?;
        return Ok(1);
    }
    if refused.is_empty() {
        w(format!(
            "verdict  acceptable (world tenet:policy/stage@0.1.0, engine profile {})",
            engine::profile_id()
        ))?;
        Ok(0)
    } else {
        w(format!(
            "verdict  REFUSED: imports {} (allowed: {})",
            refused.join(", "),
            ALLOWED_IMPORTS.join(", ")
        ))?;
        Ok(1)
    }
}
