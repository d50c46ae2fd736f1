//! `tenetctl policy push/sign/pull`: policy modules as OCI artifacts, with
//! cosign-compatible signatures, and the pulls `policy compile` and
//! `install` do for a pipeline's `oci://…@sha256:…` stages.
//!
//! Layout (the CNCF TAG-Runtime Wasm OCI artifact, as wasm-to-oci, wkg and
//! Kubewarden publish Wasm): an OCI image manifest whose config has media
//! type `application/vnd.wasm.config.v0+json` (architecture `wasm`, os
//! `wasip2`, the layer digests, the component's imports and exports) and one
//! layer, the component, `application/wasm`. The config's `created` is
//! `SOURCE_DATE_EPOCH` (else the Unix epoch), so pushing the same module
//! again yields the same manifest digest.
//!
//! Signatures are cosign's (`specs/SIGNATURE_SPEC.md` in sigstore/cosign):
//! the simple-signing JSON payload naming the manifest digest, signed with
//! ECDSA P-256/SHA-256, stored as an OCI image at tag `sha256-<hex>.sig` in
//! the same repository, the payload as a layer of media type
//! `application/vnd.dev.cosign.simplesigning.v1+json` with the base64 DER
//! signature in its `dev.cosignproject.cosign/signature` annotation. So
//! `cosign sign --key` output verifies here and ours with `cosign verify`.
//!
//! A pull checks, before writing anything: the manifest's digest (against
//! the reference, or `--expect-digest` for a tag), the config and layer
//! media types, a signature by the configured key whose payload names this
//! very digest, and the layer's digest. The module is then written to a
//! temporary file in the module dir and renamed into place.

pub mod keys;
pub mod registry;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use self::keys::{SigningKey, VerifyKey};
use self::registry::{OCI_MANIFEST, Registry, Transport};
use super::CtlError;
use crate::config::{Config, DistributionConfig};
use crate::policy::cache::sha256_hex;
use crate::policy::oci::{OciRef, file_name_for};
use crate::policy::{Manifest, ModuleRef};

/// Config media type of a Wasm OCI artifact.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
/// Layer media type of a Wasm OCI artifact.
pub const WASM_LAYER: &str = "application/wasm";
/// Layer media type of a cosign simple-signing payload.
pub const SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation carrying the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Config media type of cosign's signature images.
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Upper bound on a pulled module.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;
/// Upper bound on a signature payload or config blob.
const MAX_SMALL_BLOB: usize = 1 << 20;

/// Registry connection flags (added to `[distribution]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NetArgs {
    /// A registry (`host:port`) to reach over plain HTTP (repeatable; also
    /// `[distribution] insecure_registries`).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure_registries: Vec<String>,
    /// PEM CA bundle for HTTPS registries (default: `[distribution]
    /// ca_file`, else the system's).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl NetArgs {
    fn transport(&self, cfg: &Config) -> Transport {
        let mut insecure = cfg.distribution.insecure_registries.clone();
        insecure.extend(self.insecure_registries.iter().cloned());
        Transport {
            insecure,
            ca_file: self.ca_file.clone().or(cfg.distribution.ca_file.clone()),
        }
    }
}

/// Arguments of `tenetctl policy push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The module (a Wasm component).
    pub module: PathBuf,
    /// Where: `oci://HOST[:PORT]/REPO[:TAG]` (tag `latest` when none).
    pub reference: String,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Arguments of `tenetctl policy sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// Unencrypted EC P-256 private key, PEM (PKCS#8 or SEC1).
    #[arg(long, value_name = "KEY.pem")]
    pub key: PathBuf,
    /// What to sign: `oci://HOST[:PORT]/REPO@sha256:…` (as `push` printed).
    pub reference: String,
    #[command(flatten)]
    pub net: NetArgs,
}

/// Arguments of `tenetctl policy pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// `oci://HOST[:PORT]/REPO@sha256:…`, or `…:TAG` (with
    /// `--expect-digest` to refuse a tag that moved).
    pub reference: String,
    /// PEM public key (cosign.pub) a signature must verify with.
    #[arg(
        long,
        value_name = "KEY.pub",
        required_unless_present = "insecure_no_verify"
    )]
    pub verify_key: Option<PathBuf>,
    /// Accept the module without any signature check (never for production).
    #[arg(long, conflicts_with = "verify_key")]
    pub insecure_no_verify: bool,
    /// Refuse unless the manifest has this digest (`sha256:…`).
    #[arg(long, value_name = "sha256:HEX")]
    pub expect_digest: Option<String>,
    /// The module dir to write into.
    #[arg(long = "module-dir", value_name = "DIR")]
    pub module_dir: PathBuf,
    /// Write `<NAME>.wasm` (for `module = "NAME"`) instead of
    /// `oci-sha256-<hex>.wasm` (what `module = "oci://…@sha256:<hex>"` reads).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub net: NetArgs,
}

fn load_config() -> Result<Config, CtlError> {
    Config::load(&super::process_env(), None).map_err(CtlError::from_err)
}

fn parse_ref(s: &str) -> Result<OciRef, CtlError> {
    OciRef::parse(s).map_err(CtlError::Message)
}

/// RFC 3339 UTC time of Unix seconds (no calendar crate for one field).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A component tenet accepts, with its import and export names.
fn check_component(bytes: &[u8], path: &Path) -> Result<(Vec<String>, Vec<String>), CtlError> {
    use wasmtime::component::Component;
    // Component binary: magic, then version 0x0d and layer 1.
    if !bytes.starts_with(b"\0asm\x0d\0\x01\0") {
        return Err(CtlError::Message(format!(
            "{}: not a Wasm component (a core module or another file); build with --target wasm32-wasip2",
            path.display()
        )));
    }
    let eng = crate::policy::engine::new_engine().map_err(CtlError::from_err)?;
    let component = Component::new(&eng, bytes).map_err(|e| {
        CtlError::Message(format!(
            "{}: not a valid component: {}",
            path.display(),
            e.root_cause()
        ))
    })?;
    crate::policy::check_module(&eng, &component).map_err(|m| {
        CtlError::Message(format!("{}: tenet would refuse it: {m}", path.display()))
    })?;
    let ty = component.component_type();
    let imports = ty.imports(&eng).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(&eng).map(|(n, _)| n.to_owned()).collect();
    Ok((imports, exports))
}

/// Runs `tenetctl policy push`.
pub fn push(args: &PushArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let cfg = load_config()?;
    let mut text = args.reference.clone();
    let last = text.rfind('/').map_or(0, |i| i + 1);
    if !text[last..].contains(':') && !text.contains('@') {
        text.push_str(":latest");
    }
    let r = parse_ref(&text)?;
    if r.digest.is_some() {
        return Err(CtlError::Message(format!(
            "{}: push to a tag (oci://HOST/REPO:TAG); the digest is computed and printed",
            args.reference
        )));
    }
    let bytes = std::fs::read(&args.module)
        .map_err(|e| CtlError::Message(format!("{}: {e}", args.module.display())))?;
    let (imports, exports) = check_component(&bytes, &args.module)?;
    let layer_digest = format!("sha256:{}", sha256_hex(&bytes));
    let created = rfc3339(
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    );
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer_digest],
        "component": { "exports": exports, "imports": imports },
    }))
    .map_err(CtlError::from_err)?;
    let mut annotations = serde_json::Map::new();
    annotations.insert("org.opencontainers.image.created".into(), json!(created));
    if let Ok(Some(m)) = crate::policy::metadata::read(&bytes) {
        for (k, v) in [
            ("title", m.name),
            ("version", m.version),
            ("description", m.description),
            ("authors", m.authors.join(", ")),
        ] {
            if !v.is_empty() {
                annotations.insert(format!("org.opencontainers.image.{k}"), json!(v));
            }
        }
    }
    let mut reg = Registry::new(&args.net.transport(&cfg), &r.registry, &r.repository)
        .map_err(CtlError::Message)?;
    let at = |m: String| CtlError::Message(format!("push to {r}: {m}"));
    reg.push_blob(&bytes).map_err(at)?;
    let config_digest = reg.push_blob(&config).map_err(at)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": WASM_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": WASM_LAYER, "digest": layer_digest, "size": bytes.len() }],
        "annotations": annotations,
    }))
    .map_err(CtlError::from_err)?;
    let tag = r.tag.clone().unwrap_or_default();
    let digest = reg
        .put_manifest(&tag, OCI_MANIFEST, &manifest)
        .map_err(at)?;
    let hex = digest.trim_start_matches("sha256:");
    writeln!(out, "{}", r.pinned(hex)).map_err(CtlError::from_err)?;
    Ok(0)
}

/// The signature tag of a manifest digest (lower-case hex).
fn signature_tag(hex: &str) -> String {
    format!("sha256-{hex}.sig")
}

/// Runs `tenetctl policy sign`.
pub fn sign(args: &SignArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let cfg = load_config()?;
    let r = parse_ref(&args.reference)?;
    let Some(hex) = r.digest.clone() else {
        return Err(CtlError::Message(format!(
            "{}: sign a digest (oci://…@sha256:…, as `policy push` printed), not a tag that can move",
            args.reference
        )));
    };
    let key = SigningKey::load(&args.key).map_err(CtlError::Message)?;
    let mut reg = Registry::new(&args.net.transport(&cfg), &r.registry, &r.repository)
        .map_err(CtlError::Message)?;
    let at = |m: String| CtlError::Message(format!("sign {r}: {m}"));
    // Sign only what the registry has, under that digest.
    let served = reg.get_manifest(&format!("sha256:{hex}")).map_err(at)?;
    match served {
        Some(m) if sha256_hex(&m.bytes) == hex => {}
        Some(_) => {
            return Err(at(
                "the registry serves other bytes under that digest".into()
            ));
        }
        None => return Err(at("the registry has no manifest with that digest".into())),
    }
    let digest = format!("sha256:{hex}");
    let payload = keys::payload(&r.repo_name(), &digest);
    let sig = keys::b64(&key.sign(&payload).map_err(CtlError::Message)?);
    let payload_digest = reg.push_blob(&payload).map_err(at)?;
    let tag = signature_tag(&hex);
    // Keep the signatures already there (cosign appends; several keys may
    // sign one module).
    let mut layers: Vec<Value> = match reg.get_manifest(&tag).map_err(at)? {
        Some(m) => serde_json::from_slice::<Value>(&m.bytes)
            .ok()
            .and_then(|v| v.get("layers").and_then(Value::as_array).cloned())
            .unwrap_or_default(),
        None => Vec::new(),
    };
    layers.retain(|l| {
        !(l.get("digest").and_then(Value::as_str) == Some(payload_digest.as_str())
            && l.pointer(&format!(
                "/annotations/{}",
                SIGNATURE_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
                == Some(sig.as_str()))
    });
    layers.push(json!({
        "mediaType": SIMPLESIGNING,
        "digest": payload_digest,
        "size": payload.len(),
        "annotations": { SIGNATURE_ANNOTATION: sig },
    }));
    let diff_ids: Vec<Value> = layers
        .iter()
        .filter_map(|l| l.get("digest").cloned())
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "",
        "os": "",
        "created": rfc3339(0),
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .map_err(CtlError::from_err)?;
    let config_digest = reg.push_blob(&config).map_err(at)?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": { "mediaType": IMAGE_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": layers,
    }))
    .map_err(CtlError::from_err)?;
    reg.put_manifest(&tag, OCI_MANIFEST, &manifest)
        .map_err(at)?;
    writeln!(
        out,
        "signed {r} (signature at oci://{}:{tag})",
        r.repo_name()
    )
    .map_err(CtlError::from_err)?;
    Ok(0)
}

/// What a pull wrote.
#[derive(Debug)]
pub struct Pulled {
    /// The reference, pinned to the manifest digest.
    pub reference: OciRef,
    /// The module file written.
    pub path: PathBuf,
    /// sha256 of the module (lower-case hex): a pipeline's `sha256` pin.
    pub module_sha256: String,
    /// Whether a signature was checked.
    pub verified: bool,
}

/// The `layers[0]` of a Wasm artifact manifest, checked.
fn wasm_layer(manifest: &[u8], r: &OciRef) -> Result<(String, u64), String> {
    let v: Value = serde_json::from_slice(manifest)
        .map_err(|e| format!("{r}: the manifest is not JSON: {e}"))?;
    let config_type = v
        .pointer("/config/mediaType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if config_type != WASM_CONFIG {
        return Err(format!(
            "{r}: not a Wasm OCI artifact: config media type {config_type:?}, expected {WASM_CONFIG:?}"
        ));
    }
    let layers = v
        .get("layers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let [layer] = layers.as_slice() else {
        return Err(format!(
            "{r}: {} layers; a Wasm OCI artifact has exactly one",
            layers.len()
        ));
    };
    let media = layer.get("mediaType").and_then(Value::as_str).unwrap_or("");
    if media != WASM_LAYER {
        return Err(format!(
            "{r}: layer media type {media:?}, expected {WASM_LAYER:?}: refused"
        ));
    }
    let digest = layer
        .get("digest")
        .and_then(Value::as_str)
        .filter(|d| {
            d.strip_prefix("sha256:")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .ok_or_else(|| format!("{r}: the layer has no sha256 digest"))?;
    let size = layer.get("size").and_then(Value::as_u64).unwrap_or(0);
    if size > MAX_MODULE_BYTES {
        return Err(format!(
            "{r}: the module is {size} bytes, more than {MAX_MODULE_BYTES}"
        ));
    }
    Ok((digest.to_ascii_lowercase(), size))
}

/// Finds a signature by `key` whose payload names `digest` (`sha256:…`).
fn check_signature(
    reg: &mut Registry,
    r: &OciRef,
    hex: &str,
    key: &VerifyKey,
) -> Result<(), String> {
    let tag = signature_tag(hex);
    let digest = format!("sha256:{hex}");
    let Some(m) = reg.get_manifest(&tag)? else {
        return Err(format!(
            "{r}: unsigned: no signature at oci://{}:{tag}; refused (sign it with `tenetctl policy sign` or `cosign sign --key`)",
            r.repo_name()
        ));
    };
    let v: Value = serde_json::from_slice(&m.bytes)
        .map_err(|e| format!("{r}: signature manifest is not JSON: {e}"))?;
    let mut reasons = Vec::new();
    for layer in v
        .get("layers")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if layer.get("mediaType").and_then(Value::as_str) != Some(SIMPLESIGNING) {
            continue;
        }
        let Some(sig) = layer
            .get("annotations")
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .and_then(Value::as_str)
        else {
            reasons.push("a payload without a signature annotation".to_string());
            continue;
        };
        let Some(pd) = layer.get("digest").and_then(Value::as_str) else {
            continue;
        };
        // One unreadable signature does not hide another that verifies.
        let payload = match reg.get_blob(pd, MAX_SMALL_BLOB) {
            Ok(p) => p,
            Err(e) => {
                reasons.push(format!("payload {pd}: {e}"));
                continue;
            }
        };
        if format!("sha256:{}", sha256_hex(&payload)) != pd {
            reasons.push(format!("payload {pd} does not match its digest"));
            continue;
        }
        let sig = match keys::unb64(sig) {
            Ok(s) => s,
            Err(e) => {
                reasons.push(e);
                continue;
            }
        };
        if !key.verify(&payload, &sig) {
            reasons.push("a signature not made by this key".into());
            continue;
        }
        match keys::payload_digest(&payload) {
            Ok(d) if d == digest => return Ok(()),
            Ok(d) => reasons.push(format!(
                "a signature by this key for another manifest ({d})"
            )),
            Err(e) => reasons.push(e),
        }
    }
    if reasons.is_empty() {
        reasons.push("no cosign signature layer".into());
    }
    Err(format!(
        "{r}: no valid signature by the verification key: {}; refused",
        reasons.join("; ")
    ))
}

/// Pulls and checks a module; writes it to `dir/file_name` only when every
/// check passed. `key: None` skips the signature check.
pub fn pull_module(
    transport: &Transport,
    r: &OciRef,
    expect_digest: Option<&str>,
    key: Option<&VerifyKey>,
    dir: &Path,
    file_name: Option<&str>,
) -> Result<Pulled, String> {
    let mut reg = Registry::new(transport, &r.registry, &r.repository)?;
    let reference = match (&r.digest, &r.tag) {
        (Some(d), _) => format!("sha256:{d}"),
        (None, Some(t)) => t.clone(),
        (None, None) => return Err(format!("{r}: name a tag or a digest")),
    };
    let m = reg
        .get_manifest(&reference)?
        .ok_or_else(|| format!("{r}: not found in the registry"))?;
    let hex = sha256_hex(&m.bytes);
    if let Some(want) = &r.digest
        && *want != hex
    {
        return Err(format!(
            "{r}: the registry served a manifest with digest sha256:{hex}: refused"
        ));
    }
    if let Some(want) = expect_digest {
        let want = want.strip_prefix("sha256:").unwrap_or(want);
        if !want.eq_ignore_ascii_case(&hex) {
            return Err(format!(
                "{r}: resolves to sha256:{hex}, not the expected sha256:{want} (the tag moved): refused"
            ));
        }
    }
    let pinned = r.pinned(&hex);
    let (layer_digest, _) = wasm_layer(&m.bytes, &pinned)?;
    if let Some(key) = key {
        check_signature(&mut reg, &pinned, &hex, key)?;
    }
    let module = reg.get_blob(&layer_digest, MAX_MODULE_BYTES as usize)?;
    let module_hex = sha256_hex(&module);
    if format!("sha256:{module_hex}") != layer_digest {
        return Err(format!(
            "{pinned}: the layer served has digest sha256:{module_hex}, not {layer_digest}: refused"
        ));
    }
    let name = file_name.map_or_else(|| file_name_for(&hex), str::to_owned);
    let dest = dir.join(&name);
    write_atomic(&dest, &module).map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(Pulled {
        reference: pinned,
        path: dest,
        module_sha256: module_hex,
        verified: key.is_some(),
    })
}

/// Writes through a temporary file in the same directory and a rename.
fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new().prefix(".pull-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

/// Runs `tenetctl policy pull`.
pub fn pull(args: &PullArgs, out: &mut dyn std::io::Write) -> Result<i32, CtlError> {
    let cfg = load_config()?;
    let r = parse_ref(&args.reference)?;
    let key = match &args.verify_key {
        Some(p) => Some(VerifyKey::load(p, "--verify-key").map_err(CtlError::Message)?),
        None if args.insecure_no_verify => None,
        None => {
            return Err(CtlError::Message(
                "--verify-key KEY.pub is required (or --insecure-no-verify)".into(),
            ));
        }
    };
    let file_name = match &args.name {
        Some(n) => {
            let ok = !n.is_empty()
                && n.len() <= 63
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(CtlError::Message(format!(
                    "--name {n:?}: a module name is 1-63 of [a-z0-9-]"
                )));
            }
            Some(format!("{n}.wasm"))
        }
        None => None,
    };
    let p = pull_module(
        &args.net.transport(&cfg),
        &r,
        args.expect_digest.as_deref(),
        key.as_ref(),
        &args.module_dir,
        file_name.as_deref(),
    )
    .map_err(CtlError::Message)?;
    report_pull(&p, out)?;
    Ok(0)
}

fn report_pull(p: &Pulled, out: &mut dyn std::io::Write) -> Result<(), CtlError> {
    writeln!(
        out,
        "pulled {} -> {} (module sha256 {}{})",
        p.reference,
        p.path.display(),
        p.module_sha256,
        if p.verified {
            ", signature verified"
        } else {
            ", NOT VERIFIED"
        }
    )
    .map_err(CtlError::from_err)
}

/// Pulls every `oci://` module of `manifest` that no module dir has yet,
/// into `dest`, with `[distribution]`'s key (`policy compile`, `install`).
pub fn pull_missing(
    manifest: &Manifest,
    search: &[PathBuf],
    dest: &Path,
    dist: &DistributionConfig,
    out: &mut dyn std::io::Write,
) -> Result<(), CtlError> {
    for stage in &manifest.stages {
        let ModuleRef::Oci(r) = &stage.module else {
            continue;
        };
        if crate::policy::resolve_module_path(&stage.module, search).is_ok() {
            continue;
        }
        let key_path = dist.verify_key.clone().ok_or_else(|| {
            CtlError::Message(format!(
                "stage {:?}: module {r} is not in the module dirs, and no [distribution] verify_key \
                 is configured to pull it with (or run `tenetctl policy pull {r} --verify-key KEY.pub --module-dir {}`)",
                stage.name,
                dest.display()
            ))
        })?;
        let key =
            VerifyKey::load(&key_path, "[distribution] verify_key").map_err(CtlError::Message)?;
        let transport = Transport {
            insecure: dist.insecure_registries.clone(),
            ca_file: dist.ca_file.clone(),
        };
        let p = pull_module(&transport, r, None, Some(&key), dest, None)
            .map_err(|m| CtlError::Message(format!("stage {:?}: {m}", stage.name)))?;
        report_pull(&p, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_342_399), "2026-12-03T23:59:59Z");
    }

    #[test]
    fn only_a_one_layer_wasm_artifact_is_taken() {
        let r = OciRef::parse(&format!("oci://r/q@sha256:{}", "a".repeat(64))).unwrap();
        let d = format!("sha256:{}", "b".repeat(64));
        let m = |config: &str, layers: Value| {
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "config": { "mediaType": config },
                "layers": layers,
            }))
            .unwrap()
        };
        let one = json!([{ "mediaType": WASM_LAYER, "digest": d, "size": 10 }]);
        assert_eq!(
            wasm_layer(&m(WASM_CONFIG, one.clone()), &r).unwrap(),
            (d.clone(), 10)
        );
        let e = wasm_layer(&m(IMAGE_CONFIG, one), &r).unwrap_err();
        assert!(e.contains("not a Wasm OCI artifact"), "{e}");
        let tar = json!([{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d }]);
        let e = wasm_layer(&m(WASM_CONFIG, tar), &r).unwrap_err();
        assert!(e.contains("layer media type"), "{e}");
        let huge = json!([{ "mediaType": WASM_LAYER, "digest": d, "size": MAX_MODULE_BYTES + 1 }]);
        assert!(wasm_layer(&m(WASM_CONFIG, huge), &r).is_err());
        let two = json!([
            { "mediaType": WASM_LAYER, "digest": d },
            { "mediaType": WASM_LAYER, "digest": d }
        ]);
        assert!(
            wasm_layer(&m(WASM_CONFIG, two), &r)
                .unwrap_err()
                .contains("2 layers")
        );
    }
}
