//! `tenetctl install` into temporary directories: what it writes, that a
//! second run changes nothing, that a different conflist is only replaced
//! with `--force`, that an operator's `tenet.toml` is kept, that errors name
//! the flag or path, and that the installed `tenet` finds its precompiled
//! artifacts without any compiler.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// The directories of one installation, all under a temp dir.
struct Layout {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Layout {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        Layout { _tmp: tmp, root }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `tenetctl install` with every directory inside the temp dir.
    fn install(&self, extra: &[&str]) -> Run {
        self.install_env(extra, &[])
    }

    /// [`Layout::install`] with more environment variables.
    fn install_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Run {
        let o = Command::new(common::binary("tenetctl"))
            .arg("install")
            .arg("--pipeline")
            .arg(common::rainbond())
            .arg("--module-dir")
            .arg(common::modules_dir())
            .args(["--bin-dir", self.p("bin").to_str().unwrap()])
            .args(["--conf-dir", self.p("net.d").to_str().unwrap()])
            .args(["--config-dir", self.p("etc").to_str().unwrap()])
            .args(["--install-module-dir", self.p("modules").to_str().unwrap()])
            .args(["--cache-dir", self.p("cache").to_str().unwrap()])
            .args(["--state-dir", self.p("state").to_str().unwrap()])
            .args(extra)
            .env("TENET_CONFIG", "/dev/null")
            // The runner may itself be in a pod: only `env` says so.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    fn conflist(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.p("net.d").join(name)).unwrap()).unwrap()
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs the installed `tenet` with one plugin entry of the installed conflist.
fn run_installed_tenet(l: &Layout, command: &str, version: &str) -> (i32, String) {
    let list = l.conflist("10-tenet.conflist");
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = version.into();
    conf["name"] = list["name"].clone();
    let o = common::run_with_stdin(
        Command::new(l.p("bin/tenet"))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_PATH", l.p("bin"))
            // For `nft`; no tenetctl lives on this PATH.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("TENET_CONFIG", "/dev/null"),
        &conf.to_string(),
    );
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn install_writes_everything() {
    let l = Layout::new();
    let r = l.install(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // Binaries, executable.
    for b in ["bin/tenet", "bin/tenetctl"] {
        assert!(l.p(b).is_file(), "{b}");
        assert_eq!(mode(&l.p(b)), 0o755, "{b}");
    }
    assert_eq!(
        std::fs::read(l.p("bin/tenet")).unwrap(),
        std::fs::read(common::binary("tenet")).unwrap()
    );
    // The manifest and the four modules it names.
    let manifest = l.p("etc/policies/rainbond.toml");
    assert_eq!(
        std::fs::read_to_string(&manifest).unwrap(),
        std::fs::read_to_string(common::rainbond()).unwrap()
    );
    for m in ["tenant-map", "ipam-policy", "route-dns", "rainbond-egress"] {
        assert!(l.p(&format!("modules/{m}.wasm")).is_file(), "{m}");
    }
    assert_eq!(
        std::fs::read_dir(l.p("modules")).unwrap().count(),
        4,
        "only the pipeline's modules"
    );
    // tenet.toml names the installed pieces and is a valid configuration.
    let toml_path = l.p("etc/tenet.toml");
    let cfg = tenet::config::Config::load(
        &[("TENET_CONFIG".to_string(), toml_path.display().to_string())],
        None,
    )
    .unwrap();
    assert_eq!(cfg.pipeline.as_deref(), Some(manifest.as_path()));
    assert_eq!(cfg.module_dirs, vec![l.p("modules")]);
    assert_eq!(cfg.cache_dir, l.p("cache"));
    assert_eq!(cfg.state_dir, l.p("state"));
    // The conflist: tenet only; it points at everything because tenet does
    // not read this (non-default) config dir's tenet.toml.
    let c = l.conflist("10-tenet.conflist");
    assert_eq!(c["cniVersion"], "1.0.0");
    assert_eq!(c["name"], "tenet");
    let plugins = c["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1);
    let t = &plugins[0];
    assert_eq!(t["type"], "tenet");
    assert_eq!(t["pipeline"], manifest.to_str().unwrap());
    assert_eq!(t["moduleDirs"][0], l.p("modules").to_str().unwrap());
    assert_eq!(t["cacheDir"], l.p("cache").to_str().unwrap());
    assert_eq!(t["stateDir"], l.p("state").to_str().unwrap());
    assert!(t.get("kubernetes").is_none(), "no API lookups unless asked");
    // The report says what it did; every artifact exists.
    assert_eq!(
        r.stdout.matches("installed binary").count(),
        2,
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout.matches("installed module").count(),
        4,
        "{}",
        r.stdout
    );
    assert_eq!(
        r.stdout.matches("installed artifact").count(),
        4,
        "{}",
        r.stdout
    );
    for line in r.stdout.lines().filter(|l| l.contains(" artifact ")) {
        let path = line.split_whitespace().last().unwrap();
        assert!(Path::new(path).is_file(), "{path}");
        assert!(path.starts_with(l.p("cache").to_str().unwrap()), "{path}");
    }
    assert!(
        r.stdout.contains("tenet is installed; 13 changed"),
        "{}",
        r.stdout
    );
}

#[test]
#[ignore = "needs root and nftables (STATUS runs `nft -c`): make test runs it"]
fn the_installed_tenet_is_ready_from_its_artifacts_without_a_compiler() {
    // STATUS also asks the SDN backend (`nft -c`, a dry run), which needs root.
    tenet::netns::testing::require_root("the installed tenet's STATUS (`nft -c`)");
    let l = Layout::new();
    let r = l.install(&[]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // With no compiler anywhere (tenetctl removed, none on PATH), STATUS still
    // succeeds: the pipeline loads from the artifacts install precompiled.
    std::fs::remove_file(l.p("bin/tenetctl")).unwrap();
    let (code, out) = run_installed_tenet(&l, "STATUS", "1.1.0");
    assert_eq!(code, 0, "{out}");
    // And the same check fails without the artifacts (the check can fail).
    std::fs::remove_dir_all(l.p("cache")).unwrap();
    let (code, out) = run_installed_tenet(&l, "STATUS", "1.1.0");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("\"code\":50") && out.contains("artifact"),
        "{out}"
    );
}

#[test]
fn second_run_changes_nothing() {
    let l = Layout::new();
    let r = l.install(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = std::fs::metadata(l.p("net.d/10-tenet.conflist"))
        .unwrap()
        .modified()
        .unwrap();
    let r = l.install(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("tenet is installed; nothing changed"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("installed "), "{}", r.stdout);
    assert!(!r.stdout.contains("updated "), "{}", r.stdout);
    assert_eq!(r.stdout.matches("unchanged").count(), 13, "{}", r.stdout);
    let after = std::fs::metadata(l.p("net.d/10-tenet.conflist"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "an unchanged conflist is not rewritten");
    // No temporary files are left in any directory.
    for d in ["bin", "net.d", "etc", "etc/policies", "modules"] {
        for e in std::fs::read_dir(l.p(d)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with('.'), "{d}/{n} left behind");
        }
    }
}

#[test]
fn a_different_conflist_needs_force_and_tenet_toml_is_kept() {
    let l = Layout::new();
    assert_eq!(l.install(&[]).code, 0);
    let conf = l.p("net.d/10-tenet.conflist");

    // An operator's edit: refused, named, untouched.
    let edited = r#"{"cniVersion":"1.0.0","name":"tenet","plugins":[{"type":"tenet"}]}"#;
    std::fs::write(&conf, edited).unwrap();
    let r = l.install(&[]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains(conf.to_str().unwrap()) && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), edited);

    // A chain with portmap is a different conflist too; --force replaces it.
    let r = l.install(&["--chain-portmap", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("updated   conflist"), "{}", r.stdout);
    let c = l.conflist("10-tenet.conflist");
    assert_eq!(c["plugins"][1]["type"], "portmap");
    assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true);
    // containerd and CRI-O pass pod annotations only to plugins declaring this.
    assert_eq!(
        c["plugins"][0]["capabilities"]["io.kubernetes.cri.pod-annotations"],
        true
    );

    // Another file name, a network name and labels: a second network.
    let r = l.install(&[
        "--name",
        "20-acme.conflist",
        "--network",
        "acme",
        "--label",
        "tenant_id=acme",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let c = l.conflist("20-acme.conflist");
    assert_eq!(c["name"], "acme");
    assert_eq!(
        c["plugins"][0]["args"]["cni"]["labels"][0],
        serde_json::json!({"key": "tenant_id", "value": "acme"})
    );

    // The operator's tenet.toml is never replaced; the conflist keeps
    // pointing at the installed pieces.
    let toml_path = l.p("etc/tenet.toml");
    std::fs::write(&toml_path, "log_level = \"debug\"\n").unwrap();
    let r = l.install(&["--chain-portmap"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("kept the existing"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(&toml_path).unwrap(),
        "log_level = \"debug\"\n"
    );
}

#[test]
fn errors_name_the_flag_or_path() {
    let l = Layout::new();
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--name".into(), "a/b.conflist".into()],
            "--name".into(),
        ),
        (
            vec!["--name".into(), "10-tenet.conf".into()],
            "--name".into(),
        ),
        (
            vec!["--network".into(), "bad name".into()],
            "--network".into(),
        ),
        (vec!["--label".into(), "novalue".into()], "--label".into()),
        (
            vec!["--tenet-bin".into(), l.p("nope").display().to_string()],
            "--tenet-bin".into(),
        ),
    ];
    for (args, needle) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = l.install(&a);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stdout);
        assert!(r.stderr.contains(&needle), "{needle}: {}", r.stderr);
    }
    // A bin dir that is a file.
    std::fs::write(l.p("bin"), "not a dir").unwrap();
    let r = l.install(&[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("--bin-dir") && r.stderr.contains(l.p("bin").to_str().unwrap()),
        "{}",
        r.stderr
    );
    std::fs::remove_file(l.p("bin")).unwrap();
    // A pipeline naming a module that is nowhere.
    let m = common::manifest(
        &l.root,
        "p.toml",
        "[[stage]]\nname = \"x\"\nmodule = \"no-such-module\"\n",
    );
    let o = Command::new(common::binary("tenetctl"))
        .args(["install", "--pipeline", m.to_str().unwrap()])
        .args(["--bin-dir", l.p("bin").to_str().unwrap()])
        .args(["--install-module-dir", l.p("modules").to_str().unwrap()])
        .env("TENET_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("--pipeline") && err.contains("p.toml") && err.contains("no-such-module"),
        "{err}"
    );
    // Nothing was written for a refused run but what came before the error.
    assert!(!l.p("net.d").exists());
}

/// Every entry of a directory, for "no temporary file left" checks.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn plugin_source_puts_the_chained_plugins_into_the_bin_dir_before_the_conflist() {
    let l = Layout::new();
    let src = l.p("plugins");
    std::fs::create_dir(&src).unwrap();
    let src_arg = src.to_str().unwrap();

    // A source that is not a directory (a typo) is refused, not ignored.
    let nope = l.p("no-such-dir");
    let r = l.install(&["--chain-portmap", "--plugin-source", nope.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("--plugin-source") && r.stderr.contains("not a directory"),
        "{}",
        r.stderr
    );

    // Neither the source nor the bin dir has portmap: refused, named, and no
    // conflist names a plugin the runtime cannot find.
    let r = l.install(&["--chain-portmap", "--plugin-source", src_arg]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("--plugin-source")
            && r.stderr.contains("portmap")
            && r.stderr.contains(src_arg),
        "{}",
        r.stderr
    );
    assert!(!l.p("net.d/10-tenet.conflist").exists());
    assert!(!l.p("bin/portmap").exists());

    // portmap is there but not loopback, which containerd's CRI runs from
    // the same bin dir for every sandbox: refused the same way.
    std::fs::write(src.join("portmap"), b"portmap v1").unwrap();
    std::fs::write(src.join("bridge"), b"not chained").unwrap();
    let r = l.install(&["--chain-portmap", "--plugin-source", src_arg]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains("loopback") && r.stderr.contains("containerd's CRI"),
        "{}",
        r.stderr
    );
    assert!(!l.p("net.d/10-tenet.conflist").exists());

    // Copied, executable, byte for byte, no temporary file left.
    std::fs::write(src.join("loopback"), b"loopback v1").unwrap();
    let r = l.install(&["--chain-portmap", "--plugin-source", src_arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("installed plugin"), "{}", r.stdout);
    assert_eq!(std::fs::read(l.p("bin/portmap")).unwrap(), b"portmap v1");
    assert_eq!(mode(&l.p("bin/portmap")), 0o755);
    assert_eq!(std::fs::read(l.p("bin/loopback")).unwrap(), b"loopback v1");
    assert_eq!(mode(&l.p("bin/loopback")), 0o755);
    assert_eq!(
        names(&l.p("bin")),
        ["loopback", "portmap", "tenet", "tenetctl"],
        "the chained plugin and loopback, nothing else"
    );
    assert_eq!(
        l.conflist("10-tenet.conflist")["plugins"][1]["type"],
        "portmap"
    );

    // Twice: nothing changes.
    let r = l.install(&["--chain-portmap", "--plugin-source", src_arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("unchanged plugin"), "{}", r.stdout);
    assert!(r.stdout.contains("nothing changed"), "{}", r.stdout);

    // A new plugin in the source replaces the installed one.
    std::fs::write(src.join("portmap"), b"portmap v2").unwrap();
    let r = l.install(&["--chain-portmap", "--plugin-source", src_arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("updated   plugin"), "{}", r.stdout);
    assert_eq!(std::fs::read(l.p("bin/portmap")).unwrap(), b"portmap v2");

    // A source without it keeps the bin dir's copy (a node whose packages
    // already put portmap there) and says so.
    std::fs::remove_file(src.join("portmap")).unwrap();
    let r = l.install(&["--chain-portmap", "--plugin-source", src_arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("note: kept"), "{}", r.stdout);
    assert_eq!(std::fs::read(l.p("bin/portmap")).unwrap(), b"portmap v2");

    // No --plugin-source and no plugin in the bin dir: installed (a runtime
    // with several plugin dirs may find it), with a warning naming the flag.
    let l2 = Layout::new();
    let r = l2.install(&["--chain-portmap"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("has no `portmap`") && r.stdout.contains("--plugin-source"),
        "{}",
        r.stdout
    );
}

#[test]
fn config_file_is_installed_and_replaces_a_different_one() {
    let l = Layout::new();
    let given = l.p("given.toml");
    std::fs::write(&given, "log_level = \"debug\"\n").unwrap();
    let arg = given.to_str().unwrap().to_owned();
    let toml_path = l.p("etc/tenet.toml");

    let r = l.install(&["--config-file", &arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("installed config"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(&toml_path).unwrap(),
        "log_level = \"debug\"\n"
    );
    let r = l.install(&["--config-file", &arg]);
    assert!(r.stdout.contains("nothing changed"), "{}", r.stdout);

    // A changed ConfigMap replaces the node's file.
    std::fs::write(&given, "log_level = \"info\"\n").unwrap();
    let r = l.install(&["--config-file", &arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("updated   config"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(&toml_path).unwrap(),
        "log_level = \"info\"\n"
    );

    // A broken file is refused before anything is written.
    std::fs::write(&given, "pipeline = [\n").unwrap();
    let r = l.install(&["--config-file", &arg]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("--config-file"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&toml_path).unwrap(),
        "log_level = \"info\"\n"
    );
}

/// `--write-kubeconfig`: the node's kubeconfig for the CNI exec, from the
/// pod's in-cluster settings (the DaemonSet's init container).
#[test]
fn install_writes_the_nodes_kubeconfig_from_the_service_account() {
    let l = Layout::new();
    let sa = l.p("sa");
    std::fs::create_dir(&sa).unwrap();
    common::kube::make_certs(&sa);
    std::fs::write(sa.join("token"), "sa-token-1\n").unwrap();
    let kc = l.p("etc/kubeconfig");
    let flags = [
        "--write-kubeconfig",
        kc.to_str().unwrap(),
        "--service-account-dir",
        sa.to_str().unwrap(),
        "--kubernetes-labels",
    ];
    let env = [
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ];
    let r = l.install_env(&flags, &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("installed kubeconfig"), "{}", r.stdout);
    assert_eq!(mode(&kc), 0o600);
    let c = tenet::kube::kubeconfig::from_file(&kc).unwrap();
    assert_eq!(c.server, "https://10.96.0.1:443");
    assert_eq!(
        c.auth,
        tenet::kube::kubeconfig::Auth::Token("sa-token-1".into())
    );
    assert_eq!(
        c.ca_pem.as_deref(),
        Some(&std::fs::read(sa.join("ca.crt")).unwrap()[..])
    );
    // --kubernetes-labels: the network reads pod and namespace labels (the
    // failure policy stays tenet.toml's).
    let t = &l.conflist("10-tenet.conflist")["plugins"][0];
    assert_eq!(
        t["kubernetes"],
        serde_json::json!({ "podLabels": true, "namespaceLabels": true })
    );
    // Twice: nothing changes.
    let r = l.install_env(&flags, &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("unchanged kubeconfig"), "{}", r.stdout);
    assert!(r.stdout.contains("nothing changed"), "{}", r.stdout);

    // A broken service account: refused naming the file, the node's
    // kubeconfig kept.
    let before = std::fs::read(&kc).unwrap();
    std::fs::write(sa.join("token"), "").unwrap();
    let r = l.install_env(&flags, &env);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(
        r.stderr.contains(sa.join("token").to_str().unwrap()) && r.stderr.contains("empty"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&kc).unwrap(), before);
    // Outside a pod: refused naming the variable, before anything is
    // written.
    let l2 = Layout::new();
    let kc2 = l2.p("etc/kubeconfig");
    let r = l2.install(&[
        "--write-kubeconfig",
        kc2.to_str().unwrap(),
        "--service-account-dir",
        sa.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("KUBERNETES_SERVICE_HOST"), "{}", r.stderr);
    assert!(!l2.p("bin").exists() && !kc2.exists());
}
