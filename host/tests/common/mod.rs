//! Shared helpers for integration tests: where the built modules and release
//! binaries are, temporary caches, and manifests written on the fly.
//!
//! The tests need `make guests build` first (`make test` does it). A missing
//! artifact is a loud failure, never a skip.
#![allow(dead_code)]

pub mod cni;
pub mod etcd;
pub mod install;
pub mod ipam;
pub mod kube;
pub mod registry;

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The directory holding the built guest components.
pub fn modules_dir() -> PathBuf {
    let dir = std::env::var_os("TENET_TEST_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/modules"));
    for m in [
        "tenant-map",
        "ipam-policy",
        "route-dns",
        "rainbond-egress",
        "hostile-loop",
    ] {
        assert!(
            dir.join(format!("{m}.wasm")).is_file(),
            "{}/{m}.wasm is missing: run `make guests` (or set TENET_TEST_MODULES)",
            dir.display()
        );
    }
    dir
}

/// A release binary (`tenet` or `tenetctl`), built by `make build`.
pub fn binary(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_ascii_uppercase());
    let p = std::env::var_os(&var)
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root().join(p) })
        .unwrap_or_else(|| root().join("target/release").join(name));
    assert!(
        p.is_file(),
        "{} is missing: run `make build` (or set {var})",
        p.display()
    );
    p
}

/// Writes a manifest into `dir` and returns its path.
pub fn manifest(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The repository's rainbond pipeline.
pub fn rainbond() -> PathBuf {
    root().join("policies/rainbond.toml")
}

/// A precompiled-artifact cache shared by the tests of one build tree, so
/// each module is compiled once per run rather than once per test.
pub fn shared_cache() -> PathBuf {
    root().join("target/test-cache")
}

/// Starts `cmd` with stdin, stdout and stderr piped, writes `stdin` and
/// closes it (as a CNI runtime feeds a plugin its configuration).
pub fn spawn_with_stdin(cmd: &mut std::process::Command, stdin: &str) -> std::process::Child {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child
}

/// [`spawn_with_stdin`], then waits for the output.
pub fn run_with_stdin(cmd: &mut std::process::Command, stdin: &str) -> std::process::Output {
    spawn_with_stdin(cmd, stdin).wait_with_output().unwrap()
}
