//! The daemon's loaded pipelines (`tenet::serve::warm`), in process, with the
//! real modules: an idle pipeline is reused, concurrent invocations each get
//! one, and a changed manifest or module file is never served from an old
//! load.

mod common;

use tenet::plan::AddressAuthority;
use tenet::policy::PipelineOptions;
use tenet::policy::cache::{ArtifactCache, Builder};
use tenet::serve::warm;

fn opts(dir: &std::path::Path, modules: &std::path::Path) -> PipelineOptions {
    PipelineOptions {
        module_dirs: vec![modules.to_owned()],
        cache_dir: dir.join("cache"),
        builder: Builder::InProcess,
        one_shot: false,
        authority: AddressAuthority::default(),
    }
}

#[test]
fn pipelines_are_reused_until_their_files_change() {
    warm::enable();
    let w = warm::get().expect("enabled");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A module directory of copies, so a module file can be replaced.
    let modules = dir.join("modules");
    std::fs::create_dir(&modules).unwrap();
    for m in ["tenant-map", "ipam-policy", "route-dns", "rainbond-egress"] {
        std::fs::copy(
            common::modules_dir().join(format!("{m}.wasm")),
            modules.join(format!("{m}.wasm")),
        )
        .unwrap();
    }
    let text = std::fs::read_to_string(common::rainbond()).unwrap();
    let path = common::manifest(dir, "p.toml", &text);
    let o = opts(dir, &modules);
    let lease = || {
        w.lease(&path, &o, ArtifactCache::new(&o.cache_dir))
            .unwrap()
    };

    let first = lease();
    assert_eq!(first.stage_names().count(), 4);
    assert_eq!(w.idle(), 0);
    drop(first);
    assert_eq!(w.idle(), 1, "kept after use");
    let again = lease();
    assert_eq!(w.idle(), 0, "the idle one was taken, not a new load");
    // A second invocation at the same time gets a pipeline of its own.
    let second = lease();
    drop((again, second));
    assert_eq!(w.idle(), 2);
    // More than MAX_IDLE at once: the extra ones are dropped after use.
    let many: Vec<_> = (0..warm::MAX_IDLE + 2).map(|_| lease()).collect();
    drop(many);
    assert_eq!(w.idle(), warm::MAX_IDLE);

    // An edited manifest: the old loads go, the new stages serve.
    let three = text
        .split("[[stage]]")
        .filter(|s| !s.contains("rainbond-egress"))
        .collect::<Vec<_>>()
        .join("[[stage]]");
    std::fs::write(&path, three).unwrap();
    let edited = lease();
    assert_eq!(edited.stage_names().count(), 3);
    assert_eq!(w.idle(), 0, "nothing of the old manifest kept");
    drop(edited);
    assert_eq!(w.idle(), 1);

    // A replaced module file (same content, a new file): a new load, as an
    // exec would do (it re-resolves every module).
    let m = modules.join("route-dns.wasm");
    let bytes = std::fs::read(&m).unwrap();
    std::fs::remove_file(&m).unwrap();
    std::fs::write(&m, bytes).unwrap();
    let replaced = lease();
    assert_eq!(w.idle(), 0, "the load from the old file was not reused");
    drop(replaced);
    // A module gone: the load fails as an exec's would, nothing stale serves.
    std::fs::remove_file(&m).unwrap();
    let e = w
        .lease(&path, &o, ArtifactCache::new(&o.cache_dir))
        .err()
        .expect("a missing module is an error");
    assert!(e.to_string().contains("route-dns"), "{e}");
}
