//! Pipeline bundles: all stages of a pipeline composed into one component,
//! precompiled into one artifact.
//!
//! Why: every component an exec loads costs a file mapping, ELF parsing,
//! type and code registration, and at exit their teardown — about 70 µs per
//! stage after the first on the 2-vCPU reference VM (docs/perf.md), most of
//! the pipeline's budget. A bundle pays that once per exec, whatever the
//! number of stages.
//!
//! What it is: a component that instantiates each stage's component (in
//! manifest order; the same module twice is two instances) and exports the
//! stage's two functions under [`export_name`] (`stage0-evaluate`,
//! `stage0-validate-settings`, `stage1-evaluate`, …). Each stage keeps its
//! own instance and its own linear memory, so stages still cannot see each
//! other's state; their imports (`tenet:policy/host`, `tenet:policy/types`)
//! are merged into the bundle's imports and checked against the allowlist
//! like any module's. Per-stage fuel and memory caps still hold: the host
//! sets the stage's fuel before each call, and a stage's memory can only
//! grow during its own call (see `pipeline.rs`).
//!
//! Key: sha256 of [`FORMAT`] and the stages' module digests in order
//! ([`key`]), so a bundle is found from the digests the loader resolves
//! anyway, and any change of module or order is a different bundle. Settings
//! are call arguments, not part of the bundle. The bundle is stored in the
//! same artifact cache, under the same trust rules, as stage artifacts.
//!
//! Built by `tenetctl policy compile` (and so by `tenetctl install`), and by
//! the CNI binary only when it is already rebuilding a stage's artifact
//! (after an upgrade). Without a bundle, the pipeline loads stage by stage:
//! a missing bundle only costs time, never a pod.

use super::cache::sha256_hex;

/// Bundle format revision: part of every key (bump when the export naming
/// or the composition changes).
pub const FORMAT: &str = "tenet-pipeline-bundle-1";

/// The cache key of the bundle of stages with these module digests, in
/// order.
pub fn key<'a>(digests: impl IntoIterator<Item = &'a str>) -> String {
    let mut text = String::from(FORMAT);
    for d in digests {
        text.push('\n');
        text.push_str(d);
    }
    sha256_hex(text.as_bytes())
}

/// The bundle's export name for a stage function (`evaluate` or
/// `validate-settings`) of the stage at `index` (0-based, manifest order).
pub fn export_name(index: usize, func: &str) -> String {
    format!("stage{index}-{func}")
}

/// Composes stage components (their `.wasm` bytes, in manifest order) into
/// one bundle component.
#[cfg(feature = "compiler")]
pub fn compose(stages: &[Vec<u8>]) -> Result<Vec<u8>, String> {
    use wac_graph::{CompositionGraph, EncodeOptions, types::Package};

    let mut graph = CompositionGraph::new();
    for (i, bytes) in stages.iter().enumerate() {
        // A package name per stage: the same module may appear twice.
        let pkg = Package::from_bytes(
            &format!("tenet-bundle:stage{i}"),
            None,
            bytes.clone(),
            graph.types_mut(),
        )
        .map_err(|e| format!("stage {i}: {e:#}"))?;
        let pkg = graph
            .register_package(pkg)
            .map_err(|e| format!("stage {i}: {e:#}"))?;
        // Its imports are left unsatisfied, so they become the bundle's own
        // (merged by name across stages).
        let inst = graph.instantiate(pkg);
        for func in ["evaluate", "validate-settings"] {
            let f = graph
                .alias_instance_export(inst, func)
                .map_err(|e| format!("stage {i}: export {func:?}: {e:#}"))?;
            graph
                .export(f, export_name(i, func))
                .map_err(|e| format!("stage {i}: export {func:?}: {e:#}"))?;
        }
    }
    graph
        .encode(EncodeOptions::default())
        .map_err(|e| format!("composing the pipeline bundle: {e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_depends_on_every_digest_and_their_order() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let ab = key([a.as_str(), b.as_str()]);
        assert_eq!(ab.len(), 64);
        assert_eq!(ab, key([a.as_str(), b.as_str()]));
        assert_ne!(ab, key([b.as_str(), a.as_str()]));
        assert_ne!(ab, key([a.as_str()]));
        assert_ne!(ab, key([a.as_str(), b.as_str(), b.as_str()]));
        // Never the digest of a single module (a bundle is not a stage).
        assert_ne!(key([a.as_str()]), a);
    }

    #[test]
    fn export_names_are_component_model_names() {
        assert_eq!(export_name(0, "evaluate"), "stage0-evaluate");
        assert_eq!(
            export_name(12, "validate-settings"),
            "stage12-validate-settings"
        );
    }
}
