//! `tenetctl install`: puts tenet on a node the way a DaemonSet init
//! container or a package post-install script would.
//!
//! 1. `tenet` and `tenetctl` go into the CNI plugin directory (`--bin-dir`);
//!    `tenet` runs `tenetctl` from beside itself to rebuild a missing artifact.
//! 2. The pipeline manifest goes to `<config-dir>/policies/`, the modules it
//!    names to `--install-module-dir`; `oci://…@sha256:…` modules not found
//!    locally are pulled there, their signature checked with the
//!    `[distribution] verify_key` of the `tenet.toml` in `--config-dir`.
//! 3. `<config-dir>/tenet.toml` is written only when absent: an operator's
//!    file is never replaced. `--config-file FILE` installs FILE instead,
//!    replacing a different one (a DaemonSet's ConfigMap is then the node's
//!    configuration).
//! 4. Every module is precompiled into the artifact cache (the same code as
//!    `tenetctl policy compile`, which also validates the settings), so the
//!    first pod does not pay a compile.
//! 5. The conflist goes to `<conf-dir>/<name>`. It names the installed
//!    pipeline, and also the module, cache and state directories whenever
//!    `tenet` would not find them through its own configuration file (a
//!    config dir other than `/etc/tenet`, or flags that differ from it).
//!    Before it is written, every chained plugin it names (`portmap`), and
//!    `loopback` (which containerd's CRI runs for every sandbox), is copied
//!    from `--plugin-source` into `--bin-dir` (runtimes such as containerd
//!    1.6 search one bin dir only), so a runtime never reads a conflist
//!    naming a plugin it cannot find.
//!
//! With `--write-kubeconfig FILE` (the DaemonSet's init container), the
//! node's kubeconfig for the CNI exec is written from the pod's in-cluster
//! settings before the conflist ([`super::node_kubeconfig`]).
//!
//! Every file is written to a temporary name in its directory and renamed
//! into place (a runtime reading the conf dir, or a `tenet` exec starting from
//! the bin dir, sees the old file or the new one, never half of one). Running
//! it twice changes nothing and says so. A different existing conflist is
//! only replaced with `--force`. Each error names the flag or path at fault.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{CtlError, ModuleArgs, compile};
use crate::config::{Config, DEFAULT_CONFIG_FILE};
use crate::policy::cache::{ArtifactCache, sha256_file};
use crate::policy::{Manifest, ModuleRef};

/// Arguments of `tenetctl install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The pipeline manifest to install (e.g. `policies/rainbond.toml`).
    #[arg(long, value_name = "FILE")]
    pub pipeline: PathBuf,
    /// CNI plugin directory that receives `tenet` and `tenetctl`.
    #[arg(long, value_name = "DIR", default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// CNI configuration directory that receives the conflist.
    #[arg(long, value_name = "DIR", default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// File name of the conflist in `--conf-dir`.
    #[arg(long, value_name = "FILE", default_value = "10-tenet.conflist")]
    pub name: String,
    /// Network name in the conflist (what `podman --network` and libcni select).
    #[arg(long, value_name = "NAME", default_value = "tenet")]
    pub network: String,
    /// Append the reference `portmap` plugin to the chain (hostPort support).
    #[arg(long)]
    pub chain_portmap: bool,
    /// A label every pod on this network carries (`KEY=VALUE`, repeatable),
    /// written as `args.cni.labels`: e.g. `tenant_id=acme` puts all of a
    /// podman network's containers into one tenant.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Read each pod's labels and its namespace's labels from the API server
    /// at ADD (the conflist's `kubernetes` key), so tenant rules on labels
    /// work under kubelet. Needs `[kubernetes]` in tenet.toml (a kubeconfig,
    /// e.g. from `--write-kubeconfig`); when the API cannot be read the ADD
    /// fails with code 11 unless `[kubernetes] failure_policy = "continue"`.
    #[arg(long)]
    pub kubernetes_labels: bool,
    /// Where the chained plugins the conflist names (`portmap`) and
    /// `loopback` (containerd's CRI runs it for every sandbox) are copied
    /// from into `--bin-dir` (e.g. `/usr/lib/cni`). A plugin missing here but
    /// already in `--bin-dir` is kept; missing in both is an error.
    #[arg(long, value_name = "DIR")]
    pub plugin_source: Option<PathBuf>,
    /// Install this file as `<config-dir>/tenet.toml`, replacing a different
    /// one (default: write one only when absent, never replace it).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Replace an existing conflist that differs from the one tenet would write.
    #[arg(long)]
    pub force: bool,
    /// Directory for `tenet.toml` and `policies/<manifest>`.
    #[arg(long, value_name = "DIR", default_value = "/etc/tenet")]
    pub config_dir: PathBuf,
    /// Directory the pipeline's modules are copied into.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/tenet/modules")]
    pub install_module_dir: PathBuf,
    /// Local state directory for tenet (default: the existing `tenet.toml`'s,
    /// else tenet's built-in default).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The `tenet` binary to install (default: `tenet` beside this `tenetctl`).
    #[arg(long, value_name = "FILE")]
    pub tenet_bin: Option<PathBuf>,
    /// Where to find the modules (`--module-dir`, searched first) and the
    /// artifact cache to fill (`--cache-dir`; default: the existing
    /// `tenet.toml`'s, else tenet's built-in default).
    #[command(flatten)]
    pub modules: ModuleArgs,
    /// `--write-kubeconfig`, `--service-account-dir`.
    #[command(flatten)]
    pub kubeconfig: super::node_kubeconfig::KubeconfigArgs,
}

/// What one step did to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The file did not exist.
    Created,
    /// The file existed with other content or mode.
    Updated,
    /// The file already was as it should be: not written.
    Unchanged,
}

impl Change {
    fn word(self) -> &'static str {
        match self {
            Change::Created => "installed",
            Change::Updated => "updated  ",
            Change::Unchanged => "unchanged",
        }
    }
}

/// Collects what changed, for the report and the summary line.
struct Report<'a> {
    out: &'a mut dyn Write,
    changed: usize,
}

impl Report<'_> {
    fn line(&mut self, change: Change, what: &str, path: &Path) -> Result<(), CtlError> {
        if change != Change::Unchanged {
            self.changed += 1;
        }
        writeln!(self.out, "{} {what:<9} {}", change.word(), path.display())
            .map_err(CtlError::from_err)
    }

    fn note(&mut self, text: &str) -> Result<(), CtlError> {
        writeln!(self.out, "{text}").map_err(CtlError::from_err)
    }
}

/// Installs tenet; see the module documentation.
pub fn run(args: &InstallArgs, out: &mut dyn Write) -> Result<i32, CtlError> {
    check_conflist_name(&args.name)?;
    check_network_name(&args.network)?;
    let labels = parse_labels(&args.labels)?;
    let abs = |flag: &str, p: &Path| {
        std::path::absolute(p)
            .map_err(|e| CtlError::Message(format!("{flag} {}: {e}", p.display())))
    };
    let bin_dir = abs("--bin-dir", &args.bin_dir)?;
    let conf_dir = abs("--conf-dir", &args.conf_dir)?;
    let config_dir = abs("--config-dir", &args.config_dir)?;
    let module_dest = abs("--install-module-dir", &args.install_module_dir)?;
    let source_manifest = abs("--pipeline", &args.pipeline)?;
    let plugin_source = match &args.plugin_source {
        Some(d) if !d.is_dir() => {
            return Err(CtlError::Message(format!(
                "--plugin-source: {} is not a directory",
                d.display()
            )));
        }
        Some(d) => Some(abs("--plugin-source", d)?),
        None => None,
    };
    let manifest = Manifest::load(&source_manifest)
        .map_err(|e| CtlError::Message(format!("--pipeline: {e}")))?;
    // The in-cluster settings are checked before anything is written.
    let kubeconfig = match &args.kubeconfig.write_kubeconfig {
        Some(dest) => Some((
            abs("--write-kubeconfig", dest)?,
            super::node_kubeconfig::render(
                &super::process_env(),
                &args.kubeconfig.service_account_dir,
            )?,
        )),
        None => None,
    };

    // The operator's tenet.toml, if there is one, provides the defaults for
    // the cache and state directories.
    let toml_path = config_dir.join("tenet.toml");
    // A given file is checked before anything is written, and then stands
    // for the node's configuration.
    let given_config = match &args.config_file {
        Some(f) => {
            let f = abs("--config-file", f)?;
            let text = std::fs::read(&f)
                .map_err(|e| CtlError::Message(format!("--config-file {}: {e}", f.display())))?;
            let cfg = load_config_file(&f).map_err(|e| CtlError::context("--config-file", e))?;
            Some((text, cfg))
        }
        None => None,
    };
    let existing = if let Some((_, cfg)) = &given_config {
        Some(cfg.clone())
    } else if toml_path.exists() {
        Some(load_config_file(&toml_path)?)
    } else {
        None
    };
    let base = existing.clone().unwrap_or_default();
    let cache_dir = match &args.modules.cache_dir {
        Some(c) => abs("--cache-dir", c)?,
        None => base.cache_dir.clone(),
    };
    let state_dir = match &args.state_dir {
        Some(s) => abs("--state-dir", s)?,
        None => base.state_dir.clone(),
    };

    let mut report = Report { out, changed: 0 };

    // 1. Binaries.
    let tenetctl_src = std::env::current_exe()
        .map_err(|e| CtlError::Message(format!("cannot locate the running tenetctl: {e}")))?;
    let tenet_src = match &args.tenet_bin {
        Some(p) => abs("--tenet-bin", p)?,
        None => tenetctl_src.with_file_name("tenet"),
    };
    if !tenet_src.is_file() {
        return Err(CtlError::Message(format!(
            "--tenet-bin: {} is not a file (default: `tenet` beside tenetctl)",
            tenet_src.display()
        )));
    }
    ensure_dir("--bin-dir", &bin_dir)?;
    for (src, name) in [(&tenet_src, "tenet"), (&tenetctl_src, "tenetctl")] {
        let dest = bin_dir.join(name);
        let c = install_copy(src, &dest, 0o755)?;
        report.line(c, "binary", &dest)?;
    }

    // 2. Modules, then the manifest (which may need its module paths rewritten).
    ensure_dir("--install-module-dir", &module_dest)?;
    let mut search = args.modules.options()?.module_dirs;
    // `oci://` modules are pulled (signature checked, with the key of the
    // tenet.toml in --config-dir) straight into the module dir.
    search.push(module_dest.clone());
    super::oci::pull_missing(
        &manifest,
        &search,
        &module_dest,
        &base.distribution,
        report.out,
    )?;
    let mut installed_modules: Vec<PathBuf> = Vec::new();
    let mut rewrites: Vec<(usize, PathBuf)> = Vec::new();
    for (i, stage) in manifest.stages.iter().enumerate() {
        let src = crate::policy::resolve_module_path(&stage.module, &search).map_err(|e| {
            CtlError::Message(format!(
                "--pipeline {}: stage {:?}: {e} (add --module-dir)",
                source_manifest.display(),
                stage.name
            ))
        })?;
        let dest = match &stage.module {
            ModuleRef::Named(n) => module_dest.join(format!("{n}.wasm")),
            // Found under the name tenet looks for; the manifest keeps the
            // reference.
            ModuleRef::Oci(r) => module_dest.join(r.file_name().unwrap_or_default()),
            ModuleRef::Path(p) => {
                let file = p.file_name().ok_or_else(|| {
                    CtlError::Message(format!(
                        "stage {:?}: module path has no file name",
                        stage.name
                    ))
                })?;
                let dest = module_dest.join(file);
                rewrites.push((i, dest.clone()));
                dest
            }
        };
        if installed_modules.contains(&dest) {
            continue;
        }
        let c = install_copy(&src, &dest, 0o644)?;
        report.line(c, "module", &dest)?;
        installed_modules.push(dest);
    }
    let policies = config_dir.join("policies");
    ensure_dir("--config-dir", &policies)?;
    let manifest_name = source_manifest.file_name().ok_or_else(|| {
        CtlError::Message(format!(
            "--pipeline: {} has no file name",
            source_manifest.display()
        ))
    })?;
    let manifest_dest = policies.join(manifest_name);
    let text = read("--pipeline", &source_manifest)?;
    let text = if rewrites.is_empty() {
        text
    } else {
        // Modules given by path now live in the module dir: point the stages
        // there (the file's comments are lost in the rewrite).
        rewrite_module_paths(&source_manifest, &text, &rewrites)?
    };
    let c = install_bytes(text.as_bytes(), &manifest_dest, 0o644)?;
    report.line(c, "pipeline", &manifest_dest)?;

    // 3. tenet.toml: the given one, else only when absent.
    if let Some((text, _)) = &given_config {
        let c = install_bytes(text, &toml_path, 0o644)?;
        report.line(c, "config", &toml_path)?;
    } else if existing.is_some() {
        report.line(Change::Unchanged, "config", &toml_path)?;
        report.note(&format!(
            "note: kept the existing {} (never overwritten)",
            toml_path.display()
        ))?;
    } else {
        let body = tenet_toml(&manifest_dest, &module_dest, &cache_dir, &state_dir);
        let c = install_bytes(body.as_bytes(), &toml_path, 0o644)?;
        report.line(c, "config", &toml_path)?;
    }

    // 3b. The node's kubeconfig for the CNI exec (before the conflist: an
    // exec that reads labels needs it from its first ADD).
    if let Some((dest, text)) = &kubeconfig {
        let c = super::node_kubeconfig::write_text(text, dest)?;
        report.line(c, "kubeconfig", dest)?;
    }

    // 4. Precompile every module (validates the settings too).
    let cache = ArtifactCache::new(&cache_dir);
    let mut fresh = Vec::new();
    for m in &installed_modules {
        let digest =
            sha256_file(m).map_err(|e| CtlError::Message(format!("{}: {e}", m.display())))?;
        fresh.push((m.clone(), cache.path_for(&digest).is_file(), digest));
    }
    let compile_args = compile::CompileArgs {
        pipeline: manifest_dest.clone(),
        pin: false,
        modules: ModuleArgs {
            module_dirs: vec![module_dest.clone()],
            cache_dir: Some(cache_dir.clone()),
        },
    };
    let mut sink = Vec::new();
    compile::run(&compile_args, &mut sink)?;
    for (m, had, digest) in &fresh {
        // The digest index keys on the installed file, so `tenet` finds the
        // artifact of an unpinned module without hashing it on each exec.
        cache
            .remember_digest(m, digest)
            .map_err(|e| CtlError::Message(format!("--cache-dir {}: {e}", cache_dir.display())))?;
        let art = cache.path_for(digest);
        let c = if *had {
            Change::Unchanged
        } else {
            Change::Created
        };
        report.line(c, "artifact", &art)?;
    }

    // 5. The conflist.
    let effective = if toml_path == Path::new(DEFAULT_CONFIG_FILE) {
        load_config_file(&toml_path)?
    } else {
        // tenet reads /etc/tenet/tenet.toml (or $TENET_CONFIG), not this one.
        Config::default()
    };
    let conflist = conflist(
        args,
        &labels,
        &manifest_dest,
        &module_dest,
        &cache_dir,
        &state_dir,
        &effective,
    );
    // Chained plugins first: the conflist must not name a missing one.
    let chained: Vec<&str> = conflist["plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["type"].as_str())
        .filter(|t| *t != "tenet")
        .collect();
    let chains_loopback = chained.contains(&"loopback");
    for plugin in chained {
        install_plugin(
            plugin_source.as_deref(),
            &bin_dir,
            plugin,
            "the conflist chains it",
            &mut report,
        )?;
    }
    // containerd's CRI also runs `loopback` for every sandbox, from the
    // same single bin dir: a node set up from --plugin-source needs it too.
    if plugin_source.is_some() && !chains_loopback {
        install_plugin(
            plugin_source.as_deref(),
            &bin_dir,
            "loopback",
            "containerd's CRI runs it for every pod sandbox",
            &mut report,
        )?;
    }
    ensure_dir("--conf-dir", &conf_dir)?;
    let conf_path = conf_dir.join(&args.name);
    let body = serde_json::to_string_pretty(&conflist).map_err(CtlError::from_err)? + "\n";
    if conf_path.exists() && !args.force {
        let old = read("--conf-dir", &conf_path)?;
        let same = serde_json::from_str::<Value>(&old).is_ok_and(|v| v == conflist);
        if !same {
            return Err(CtlError::Message(format!(
                "{} exists and differs from the conflist tenet would write; \
                 pass --force to replace it (or --name to write another file)",
                conf_path.display()
            )));
        }
    }
    let c = install_bytes(body.as_bytes(), &conf_path, 0o644)?;
    report.line(c, "conflist", &conf_path)?;

    let changed = report.changed;
    report.note(&if changed == 0 {
        "tenet is installed; nothing changed".to_string()
    } else {
        format!("tenet is installed; {changed} changed")
    })?;
    Ok(0)
}

/// The conflist: tenet first, then optionally portmap. Keys tenet would not
/// find through its own configuration file are spelled out.
fn conflist(
    args: &InstallArgs,
    labels: &[(String, String)],
    manifest: &Path,
    module_dir: &Path,
    cache_dir: &Path,
    state_dir: &Path,
    effective: &Config,
) -> Value {
    let mut tenet = json!({
        "type": "tenet",
        "pipeline": manifest,
        // Static addresses and MACs are requested through runtimeConfig;
        // containerd (>= 1.5) and CRI-O pass the pod's annotations when
        // the plugin declares this capability.
        "capabilities": { "ips": true, "mac": true, "io.kubernetes.cri.pod-annotations": true },
    });
    let obj = tenet.as_object_mut().expect("object literal");
    if effective.module_dirs.first().map(PathBuf::as_path) != Some(module_dir) {
        obj.insert("moduleDirs".into(), json!([module_dir]));
    }
    if effective.cache_dir != cache_dir {
        obj.insert("cacheDir".into(), json!(cache_dir));
    }
    if effective.state_dir != state_dir {
        obj.insert("stateDir".into(), json!(state_dir));
    }
    if !labels.is_empty() {
        let l: Vec<Value> = labels
            .iter()
            .map(|(k, v)| json!({ "key": k, "value": v }))
            .collect();
        obj.insert("args".into(), json!({ "cni": { "labels": l } }));
    }
    if args.kubernetes_labels {
        // The failure policy is left to tenet.toml's [kubernetes] section.
        obj.insert(
            "kubernetes".into(),
            json!({ "podLabels": true, "namespaceLabels": true }),
        );
    }
    let mut plugins = vec![tenet];
    if args.chain_portmap {
        plugins.push(json!({
            "type": "portmap",
            "capabilities": { "portMappings": true },
        }));
    }
    json!({
        // Every runtime on these machines speaks at most 1.0.0.
        "cniVersion": "1.0.0",
        "name": args.network,
        "plugins": plugins,
    })
}

/// Copies one chained plugin from `--plugin-source` into the bin dir
/// (atomically, like every other file); a plugin only the bin dir has is kept.
fn install_plugin(
    source: Option<&Path>,
    bin_dir: &Path,
    plugin: &str,
    why: &str,
    report: &mut Report<'_>,
) -> Result<(), CtlError> {
    let dest = bin_dir.join(plugin);
    let src = source.map(|s| s.join(plugin));
    match src {
        Some(src) if src.is_file() => {
            let c = install_copy(&src, &dest, 0o755)?;
            report.line(c, "plugin", &dest)
        }
        _ if dest.is_file() => {
            report.line(Change::Unchanged, "plugin", &dest)?;
            if let Some(s) = source {
                report.note(&format!(
                    "note: kept {} ({} has no `{plugin}`)",
                    dest.display(),
                    s.display()
                ))?;
            }
            Ok(())
        }
        Some(src) => Err(CtlError::Message(format!(
            "--plugin-source: {} is not a file and --bin-dir {} has no `{plugin}`; \
             {why}",
            src.display(),
            bin_dir.display()
        ))),
        // Runtimes with several plugin dirs (podman, libcni's CNI_PATH) may
        // find it elsewhere: say so, do not fail.
        None => report.note(&format!(
            "note: --bin-dir {} has no `{plugin}`, which the conflist chains; a runtime \
             that searches only that dir (containerd 1.6) fails every ADD: pass \
             --plugin-source DIR (e.g. /usr/lib/cni) to copy it there",
            bin_dir.display()
        )),
    }
}

fn tenet_toml(pipeline: &Path, module_dir: &Path, cache_dir: &Path, state_dir: &Path) -> String {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    format!(
        "# Written by `tenetctl install`; edit freely, it is never overwritten.\n\
         # Layering, later wins: built-in defaults, this file (or $TENET_CONFIG),\n\
         # TENET_* variables, then the CNI network configuration.\n\
         pipeline = {}\n\
         module_dirs = [{}]\n\
         cache_dir = {}\n\
         state_dir = {}\n\
         log_level = \"warn\"\n",
        q(pipeline),
        q(module_dir),
        q(cache_dir),
        q(state_dir)
    )
}

fn load_config_file(path: &Path) -> Result<Config, CtlError> {
    let env = [("TENET_CONFIG".to_string(), path.display().to_string())];
    Config::load(&env, None).map_err(|e| CtlError::Message(format!("{}: {e}", path.display())))
}

fn rewrite_module_paths(
    path: &Path,
    text: &str,
    rewrites: &[(usize, PathBuf)],
) -> Result<String, CtlError> {
    let mut doc: toml::Table =
        toml::from_str(text).map_err(|e| CtlError::Message(format!("{}: {e}", path.display())))?;
    let stages = doc
        .get_mut("stage")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| CtlError::Message(format!("{}: no [[stage]] array", path.display())))?;
    for (i, dest) in rewrites {
        let stage = stages
            .get_mut(*i)
            .and_then(toml::Value::as_table_mut)
            .ok_or_else(|| {
                CtlError::Message(format!("{}: stage[{i}] is not a table", path.display()))
            })?;
        stage.insert(
            "module".into(),
            toml::Value::String(dest.display().to_string()),
        );
    }
    toml::to_string(&doc).map_err(|e| CtlError::Message(format!("{}: {e}", path.display())))
}

fn parse_labels(raw: &[String]) -> Result<Vec<(String, String)>, CtlError> {
    raw.iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CtlError::Message(format!(
                "--label: {l:?} is not KEY=VALUE"
            ))),
        })
        .collect()
}

/// A conflist file name: plain, not hidden, `.conflist` (libcni parses a
/// `.conf` file as a single plugin, not a list).
fn check_conflist_name(name: &str) -> Result<(), CtlError> {
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('.')
        || !name.ends_with(".conflist")
        || name.len() == ".conflist".len()
    {
        return Err(CtlError::Message(format!(
            "--name: {name:?} must be a plain file name ending in .conflist (e.g. 10-tenet.conflist)"
        )));
    }
    Ok(())
}

/// CNI network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
fn check_network_name(name: &str) -> Result<(), CtlError> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(CtlError::Message(format!(
            "--network: {name:?} is not a CNI network name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)"
        )));
    }
    Ok(())
}

fn ensure_dir(flag: &str, dir: &Path) -> Result<(), CtlError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CtlError::Message(format!("{flag} {}: {e}", dir.display())))
}

fn read(flag: &str, path: &Path) -> Result<String, CtlError> {
    std::fs::read_to_string(path)
        .map_err(|e| CtlError::Message(format!("{flag} {}: {e}", path.display())))
}

fn install_copy(src: &Path, dest: &Path, mode: u32) -> Result<Change, CtlError> {
    let bytes =
        std::fs::read(src).map_err(|e| CtlError::Message(format!("{}: {e}", src.display())))?;
    install_bytes(&bytes, dest, mode)
}

/// Writes `bytes` to `dest` unless it already holds exactly them with `mode`.
/// Writes `bytes` to `dest` with `mode`, atomically, unless it already holds
/// them with that mode.
pub(crate) fn install_bytes(bytes: &[u8], dest: &Path, mode: u32) -> Result<Change, CtlError> {
    let change = match std::fs::metadata(dest) {
        Ok(m) => {
            let same_mode = m.permissions().mode() & 0o7777 == mode;
            if same_mode && m.is_file() && std::fs::read(dest).is_ok_and(|b| b == bytes) {
                return Ok(Change::Unchanged);
            }
            Change::Updated
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Change::Created,
        Err(e) => return Err(CtlError::Message(format!("{}: {e}", dest.display()))),
    };
    write_atomic(dest, bytes, mode)
        .map_err(|e| CtlError::Message(format!("{}: {e}", dest.display())))?;
    Ok(change)
}

/// Temp file in the same directory, fsync, rename over `dest`, fsync the
/// directory: readers see the old file or the new one.
fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let name = dest
        .file_name()
        .ok_or_else(|| std::io::Error::other("no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tenet-install.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // Before any byte is written: the umask may have narrowed the
        // creation mode, and a stale temporary file left by a crash keeps
        // its own (a kubeconfig holds a credential).
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, dest)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_errors_name_the_flag() {
        for bad in [
            "",
            "a/b.conflist",
            ".x.conflist",
            "10-tenet.conf",
            ".conflist",
        ] {
            let e = check_conflist_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("--name:"), "{e}");
        }
        check_conflist_name("10-tenet.conflist").unwrap();
        for bad in ["", "-x", "a/b", "a b"] {
            let e = check_network_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("--network:"), "{e}");
        }
        check_network_name("tenet_1.a-b").unwrap();
        let e = parse_labels(&["=x".into()]).unwrap_err().to_string();
        assert!(e.starts_with("--label:"), "{e}");
        assert_eq!(
            parse_labels(&["tenant_id=a=b".into()]).unwrap(),
            vec![("tenant_id".to_string(), "a=b".to_string())]
        );
    }

    #[test]
    fn install_bytes_is_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert_eq!(install_bytes(b"one", &p, 0o644).unwrap(), Change::Created);
        assert_eq!(install_bytes(b"one", &p, 0o644).unwrap(), Change::Unchanged);
        assert_eq!(install_bytes(b"one", &p, 0o755).unwrap(), Change::Updated);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(install_bytes(b"two", &p, 0o755).unwrap(), Change::Updated);
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A failure names the path.
        let e = install_bytes(b"x", &dir.path().join("no/such/f"), 0o644)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no/such/f"), "{e}");
    }

    #[test]
    fn path_modules_are_rewritten_into_the_module_dir() {
        let text = "# c\n[[stage]]\nname = \"a\"\nmodule = \"x/a.wasm\"\n[stage.settings]\nk = 1\n";
        let out = rewrite_module_paths(
            Path::new("p.toml"),
            text,
            &[(0, PathBuf::from("/m/a.wasm"))],
        )
        .unwrap();
        let m = Manifest::parse(Path::new("/etc/tenet/policies/p.toml"), &out).unwrap();
        assert_eq!(m.stages[0].module, ModuleRef::Path("/m/a.wasm".into()));
        assert_eq!(m.stages[0].settings, "{\"k\":1}");
    }
}
