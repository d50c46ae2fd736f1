//! Module metadata (the `tenet:metadata` custom section) and settings
//! validation against the JSON Schema it carries.
//!
//! The SDK's `export_stage!` writes the section at compile time (see
//! `guests/sdk/src/metadata.rs` for its format): one JSON object with the
//! module's name, version, description, authors, the SDK and WIT versions,
//! and `settingsSchema`. It sits in the component's core module (or at the
//! top level of the component, for tools that append it after a build);
//! both places are read.
//!
//! Settings are checked against the schema before any module code runs, by
//! `tenetctl policy compile`, `tenetctl plan` and the CNI STATUS command
//! (cached per pipeline version, see [`status_check`]); the module's own
//! `validate-settings` runs after. Errors name the stage and the field
//! (`settings.pools[0].subnetLen: …`).
//!
//! The validator covers the JSON Schema subset that settings schemas use
//! (what `schemars` derives): `type`, `properties`, `required`,
//! `additionalProperties`, `items`, `enum`, `const`, `minimum`/`maximum`
//! (and the exclusive forms), `minLength`/`maxLength`, `minItems`/
//! `maxItems`, `anyOf`/`oneOf`/`allOf`, `not`, and local `$ref`s
//! (`#/$defs/…`, `#/definitions/…`). Other keywords (`format`, `pattern`,
//! `description`, `default`, …) are not checked.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::cache::{ArtifactCache, sha256_hex};
use super::manifest::{Manifest, ModuleRef, StageSpec};
use super::{Failure, PolicyError};

/// Name of the custom section.
pub const SECTION: &str = "tenet:metadata";

/// What a module says about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleMetadata {
    /// Format version of the section (1).
    #[serde(default)]
    pub format: u32,
    /// The module crate's name.
    #[serde(default)]
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Its authors.
    #[serde(default)]
    pub authors: Vec<String>,
    /// The SDK version it was built with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<String>,
    /// The WIT package it was built against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wit: Option<String>,
    /// JSON Schema of its settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_schema: Option<Value>,
}

/// Reads the metadata section of a component (or core module), if any.
pub fn read(wasm: &[u8]) -> Result<Option<ModuleMetadata>, String> {
    let mut found = None;
    walk(wasm, 0, &mut found)?;
    match found {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("the {SECTION} section is not valid metadata: {e}")),
    }
}

/// Appends a top-level metadata section to a component (for modules not
/// built with the SDK). A section already in the module is shadowed: the
/// top-level one is found first.
pub fn annotate(wasm: &[u8], meta: &ModuleMetadata) -> Result<Vec<u8>, String> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return Err("not a Wasm binary".into());
    }
    let payload = serde_json::to_vec(meta).map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    leb(&mut body, SECTION.len() as u64);
    body.extend_from_slice(SECTION.as_bytes());
    body.extend_from_slice(&payload);
    let mut out = wasm.to_vec();
    out.push(0);
    leb(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    Ok(out)
}

fn leb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn read_leb(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or("truncated LEB128")?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("LEB128 too long".into())
}

/// Walks the sections of a module or component; a top-level section wins
/// over one in a nested core module or component (section ids 1 and 4 of
/// a component hold whole binaries).
fn walk(bytes: &[u8], depth: u32, found: &mut Option<Vec<u8>>) -> Result<(), String> {
    if depth > 4 {
        return Ok(());
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err("not a Wasm binary".into());
    }
    let component = bytes[6..8] == [1, 0];
    let mut nested = Vec::new();
    let mut at = 8;
    while at < bytes.len() {
        let id = bytes[at];
        at += 1;
        let len = read_leb(bytes, &mut at)? as usize;
        let end = at.checked_add(len).filter(|e| *e <= bytes.len());
        let end = end.ok_or("a section runs past the end of the binary")?;
        let body = &bytes[at..end];
        if id == 0 {
            let mut p = 0;
            let nlen = read_leb(body, &mut p)? as usize;
            let name = body.get(p..p + nlen).ok_or("truncated section name")?;
            if name == SECTION.as_bytes() && found.is_none() {
                *found = Some(body[p + nlen..].to_vec());
            }
        } else if component && (id == 1 || id == 4) {
            nested.push(body);
        }
        at = end;
    }
    for n in nested {
        if found.is_some() {
            break;
        }
        walk(n, depth + 1, found)?;
    }
    Ok(())
}

/// Validates `instance` against `schema`; errors name the path from `at`.
pub fn validate(schema: &Value, instance: &Value, at: &str) -> Result<(), String> {
    Validator { root: schema }.check(schema, instance, at, 0)
}

struct Validator<'a> {
    root: &'a Value,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_type(v: &Value, t: &str) -> bool {
    let actual = type_name(v);
    actual == t || (t == "number" && actual == "integer")
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.floor_char_boundary(60)])
    } else {
        s
    }
}

impl Validator<'_> {
    fn resolve(&self, r: &str) -> Result<&Value, String> {
        let path = r
            .strip_prefix("#/")
            .ok_or_else(|| format!("unsupported $ref {r:?} (only local refs)"))?;
        let mut v = self.root;
        for part in path.split('/') {
            let part = part.replace("~1", "/").replace("~0", "~");
            v = v
                .get(&part)
                .ok_or_else(|| format!("$ref {r:?} not found in the schema"))?;
        }
        Ok(v)
    }

    fn check(&self, s: &Value, v: &Value, at: &str, depth: u32) -> Result<(), String> {
        if depth > 64 {
            return Err(format!("{at}: schema nests too deep"));
        }
        let s = match s {
            Value::Bool(true) => return Ok(()),
            Value::Bool(false) => return Err(format!("{at}: no value is allowed here")),
            Value::Object(o) => o,
            _ => return Ok(()),
        };
        if let Some(Value::String(r)) = s.get("$ref") {
            self.check(self.resolve(r)?, v, at, depth + 1)?;
        }
        match s.get("type") {
            Some(Value::String(t)) if !is_type(v, t) => {
                return Err(format!("{at}: expected {t}, found {}", type_name(v)));
            }
            Some(Value::Array(ts))
                if !ts.iter().any(|t| t.as_str().is_some_and(|t| is_type(v, t))) =>
            {
                let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
                return Err(format!(
                    "{at}: expected {}, found {}",
                    names.join(" or "),
                    type_name(v)
                ));
            }
            _ => {}
        }
        if let Some(c) = s.get("const")
            && c != v
        {
            return Err(format!("{at}: must be {}, found {}", short(c), short(v)));
        }
        if let Some(Value::Array(e)) = s.get("enum")
            && !e.contains(v)
        {
            let allowed: Vec<String> = e.iter().map(short).collect();
            return Err(format!(
                "{at}: {} is not one of {}",
                short(v),
                allowed.join(", ")
            ));
        }
        if let Some(n) = v.as_f64() {
            let num = |k: &str| s.get(k).and_then(Value::as_f64);
            if let Some(m) = num("minimum")
                && n < m
            {
                return Err(format!("{at}: {v} is below the minimum {m}"));
            }
            if let Some(m) = num("maximum")
                && n > m
            {
                return Err(format!("{at}: {v} is above the maximum {m}"));
            }
            if let Some(m) = num("exclusiveMinimum")
                && n <= m
            {
                return Err(format!("{at}: {v} must be above {m}"));
            }
            if let Some(m) = num("exclusiveMaximum")
                && n >= m
            {
                return Err(format!("{at}: {v} must be below {m}"));
            }
        }
        let count = |k: &str| s.get(k).and_then(Value::as_u64).map(|n| n as usize);
        if let Value::String(text) = v {
            let len = text.chars().count();
            if let Some(m) = count("minLength")
                && len < m
            {
                return Err(format!("{at}: shorter than {m} characters"));
            }
            if let Some(m) = count("maxLength")
                && len > m
            {
                return Err(format!("{at}: longer than {m} characters"));
            }
        }
        if let Value::Array(items) = v {
            if let Some(m) = count("minItems")
                && items.len() < m
            {
                return Err(format!("{at}: fewer than {m} items"));
            }
            if let Some(m) = count("maxItems")
                && items.len() > m
            {
                return Err(format!("{at}: more than {m} items"));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    self.check(item, x, &format!("{at}[{i}]"), depth + 1)?;
                }
            }
        }
        if let Value::Object(map) = v {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(req)) = s.get("required") {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        return Err(format!("{at}.{r}: missing (required)"));
                    }
                }
            }
            for (k, x) in map {
                let here = format!("{at}.{k}");
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.check(ps, x, &here, depth + 1)?,
                    None => match s.get("additionalProperties") {
                        Some(Value::Bool(false)) => {
                            let known: Vec<&str> = props
                                .map(|p| p.keys().map(String::as_str).collect())
                                .unwrap_or_default();
                            return Err(format!(
                                "{here}: unknown field (known: {})",
                                known.join(", ")
                            ));
                        }
                        Some(extra) => self.check(extra, x, &here, depth + 1)?,
                        None => {}
                    },
                }
            }
        }
        if let Some(Value::Array(all)) = s.get("allOf") {
            for sub in all {
                self.check(sub, v, at, depth + 1)?;
            }
        }
        for (kw, exactly_one) in [("anyOf", false), ("oneOf", true)] {
            if let Some(Value::Array(alts)) = s.get(kw) {
                let results: Vec<Result<(), String>> = alts
                    .iter()
                    .map(|a| self.check(a, v, at, depth + 1))
                    .collect();
                let ok = results.iter().filter(|r| r.is_ok()).count();
                if ok == 0 {
                    // The closest failure is the most useful one: the
                    // alternative that got deepest into the value.
                    let best = results
                        .into_iter()
                        .filter_map(Result::err)
                        .max_by_key(|e| e.split(':').next().map(str::len).unwrap_or(0))
                        .unwrap_or_default();
                    return Err(best);
                }
                if exactly_one && ok > 1 {
                    return Err(format!("{at}: matches more than one alternative of oneOf"));
                }
            }
        }
        if let Some(not) = s.get("not")
            && self.check(not, v, at, depth + 1).is_ok()
        {
            return Err(format!("{at}: {} is not allowed here", short(v)));
        }
        Ok(())
    }
}

/// Checks one stage's settings (the manifest's JSON text) against the
/// schema in its module's metadata. Empty settings mean the module's
/// defaults and are not checked; a module without a schema is not checked
/// here (its `validate-settings` still is).
pub fn check_settings(
    stage: &str,
    meta: Option<&ModuleMetadata>,
    settings: &str,
) -> Result<(), PolicyError> {
    let invalid = |m: String| PolicyError::new(stage, Failure::InvalidSettings(m));
    let Some(schema) = meta.and_then(|m| m.settings_schema.as_ref()) else {
        return Ok(());
    };
    if settings.trim().is_empty() {
        return Ok(());
    }
    let value: Value =
        serde_json::from_str(settings).map_err(|e| invalid(format!("settings: {e}")))?;
    validate(schema, &value, "settings").map_err(|m| invalid(format!("{m} (module schema)")))
}

/// The metadata of a stage's module file, if it has any.
pub fn stage_metadata(
    spec: &StageSpec,
    module_dirs: &[PathBuf],
) -> Result<(PathBuf, Option<ModuleMetadata>), PolicyError> {
    let path = super::resolve_module_path(&spec.module, module_dirs)
        .map_err(|m| PolicyError::new(&spec.name, Failure::ArtifactUnavailable(m)))?;
    let bytes = std::fs::read(&path).map_err(|e| {
        PolicyError::new(
            &spec.name,
            Failure::ArtifactUnavailable(format!("{}: {e}", path.display())),
        )
    })?;
    let meta = read(&bytes).map_err(|m| {
        PolicyError::new(
            &spec.name,
            Failure::ModuleRefused(format!("{}: {m}", path.display())),
        )
    })?;
    Ok((path, meta))
}

/// Checks every stage's settings against its module's schema (what
/// `tenetctl policy compile` and `tenetctl plan` run before the modules'
/// own `validate-settings`). A stage whose module cannot be found is left
/// to the pipeline loader, which reports it with its failure policy.
pub fn check_manifest(manifest: &Manifest, module_dirs: &[PathBuf]) -> Result<(), PolicyError> {
    for spec in &manifest.stages {
        let Ok((_, meta)) = stage_metadata(spec, module_dirs) else {
            continue;
        };
        check_settings(&spec.name, meta.as_ref(), &spec.settings)?;
    }
    Ok(())
}

/// The identity of the pipeline's version for STATUS: its manifest file
/// and every stage's module file (device, inode, size, times) and pin.
/// Editing the pipeline or replacing a module changes it; nothing is read
/// or hashed but a `stat` per file.
fn pipeline_version(manifest: &Manifest, module_dirs: &[PathBuf]) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut id = String::new();
    for spec in &manifest.stages {
        let meta = super::resolve_module_path(&spec.module, module_dirs)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok());
        id.push_str(&format!(
            "{}|{}|{:?}|",
            spec.name,
            match &spec.module {
                ModuleRef::Named(n) => n.clone(),
                ModuleRef::Path(p) => p.display().to_string(),
                ModuleRef::Oci(r) => r.to_string(),
            },
            spec.sha256
        ));
        if let Some(m) = meta {
            id.push_str(&format!(
                "{}:{}:{}:{}.{}:{}.{};",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ));
        }
    }
    sha256_hex(id.as_bytes())
}

/// STATUS: every stage's settings pass its module's schema and its own
/// `validate-settings`. The verdict "valid" is kept in the artifact cache
/// for this version of the pipeline (manifest file + module files), so a
/// STATUS after the first costs a few `stat`s; a failure is never kept.
pub fn status_check(
    manifest_path: &Path,
    manifest: &Manifest,
    pipeline: &super::Pipeline,
    module_dirs: &[PathBuf],
    cache: &ArtifactCache,
) -> Result<(), PolicyError> {
    let file_meta = std::fs::metadata(manifest_path).ok();
    let kind = format!("settings-valid.{}", pipeline_version(manifest, module_dirs));
    if let Some(m) = &file_meta
        && cache.derived(manifest_path, m, &kind).as_deref() == Some(b"valid")
    {
        return Ok(());
    }
    for spec in &manifest.stages {
        let (_, meta) = stage_metadata(spec, module_dirs)?;
        check_settings(&spec.name, meta.as_ref(), &spec.settings)?;
    }
    pipeline.validate_settings()?;
    if let Some(m) = &file_meta
        && let Err(e) = cache.remember_derived(manifest_path, m, &kind, b"valid")
    {
        tracing::debug!(error = %e, "settings verdict not cached");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "pools": {"type": "array", "items": {"$ref": "#/$defs/Pool"}},
                "mode": {"oneOf": [{"type": "string", "const": "a"}, {"type": "string", "const": "b"}]},
                "mtu": {"type": ["integer", "null"], "minimum": 68, "maximum": 65535},
                "map": {"type": "object", "additionalProperties": {"type": "string"}}
            },
            "additionalProperties": false,
            "$defs": {"Pool": {"type": "object", "properties": {
                "name": {"type": "string", "minLength": 1},
                "len": {"type": "integer", "format": "uint8", "minimum": 0, "maximum": 255}
            }, "required": ["name"], "additionalProperties": false}}
        })
    }

    #[test]
    fn valid_settings_pass() {
        let v = json!({"pools": [{"name": "v4", "len": 24}], "mode": "b", "mtu": null, "map": {"x": "y"}});
        validate(&schema(), &v, "settings").unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        for (v, want) in [
            (json!({"pool": []}), "settings.pool: unknown field"),
            (
                json!({"pools": [{"name": "v4", "len": 300}]}),
                "settings.pools[0].len: 300 is above the maximum 255",
            ),
            (
                json!({"pools": [{"len": 3}]}),
                "settings.pools[0].name: missing",
            ),
            (
                json!({"pools": [{"name": ""}]}),
                "settings.pools[0].name: shorter than 1",
            ),
            (
                json!({"pools": "v4"}),
                "settings.pools: expected array, found string",
            ),
            (json!({"mode": "c"}), "settings.mode: must be \"b\""),
            (
                json!({"mtu": 10}),
                "settings.mtu: 10 is below the minimum 68",
            ),
            (
                json!({"mtu": "1500"}),
                "settings.mtu: expected integer or null",
            ),
            (json!({"map": {"k": 1}}), "settings.map.k: expected string"),
        ] {
            let e = validate(&schema(), &v, "settings").unwrap_err();
            assert!(e.starts_with(want), "{v}: {e}");
        }
    }

    #[test]
    fn the_section_is_found_at_the_top_or_in_a_nested_module_and_annotate_adds_one() {
        // A component (layer 1) holding a core module with the section.
        let meta = ModuleMetadata {
            format: 1,
            name: "inner".into(),
            ..Default::default()
        };
        let core = annotate(b"\0asm\x01\0\0\0", &meta).unwrap();
        let mut component = b"\0asm\x0d\0\x01\0".to_vec();
        component.push(1);
        leb(&mut component, core.len() as u64);
        component.extend_from_slice(&core);
        assert_eq!(read(&component).unwrap().unwrap().name, "inner");
        // A top-level section wins.
        let outer = ModuleMetadata {
            name: "outer".into(),
            ..meta.clone()
        };
        let annotated = annotate(&component, &outer).unwrap();
        assert_eq!(read(&annotated).unwrap().unwrap().name, "outer");
        assert_eq!(read(b"\0asm\x0d\0\x01\0").unwrap(), None);
        assert!(read(b"nope").is_err());
        // A section whose length runs past the end is an error, not a panic.
        assert!(read(b"\0asm\x0d\0\x01\0\x00\x7f").is_err());
    }

    #[test]
    fn empty_settings_and_modules_without_a_schema_are_not_checked() {
        let meta = ModuleMetadata {
            settings_schema: Some(schema()),
            ..Default::default()
        };
        check_settings("s", Some(&meta), "").unwrap();
        check_settings("s", None, r#"{"anything":1}"#).unwrap();
        let e = check_settings("s", Some(&meta), r#"{"pool":[]}"#).unwrap_err();
        assert_eq!(e.stage, "s");
        assert!(
            matches!(e.failure, Failure::InvalidSettings(ref m) if m.contains("settings.pool"))
        );
    }
}
