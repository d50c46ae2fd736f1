//! The engine profile: everything that shapes precompiled artifacts.
//!
//! A `.cwasm` is only loadable by an engine with the same wasmtime version,
//! the same code-affecting `Config` (fuel instrumentation here) and the same
//! wasmtime cargo features (reference/wasm-policy.md B.4). The CNI binary is
//! built runtime-only (no Cranelift) and cannot compute
//! `precompile_compatibility_hash`, so the profile id is a build-time constant
//! that names all three; bump [`PROFILE_REV`] whenever [`config`] changes.
//!
//! Rev 3 adds epoch interruption (the wall-clock deadline per stage and per
//! pipeline) and the artifact trailer that records the module digests an
//! artifact was compiled from (`cache.rs`): artifacts of rev 2 are neither,
//! so they live in another directory and are never looked at.

use wasmtime::{Config, Engine};

/// Revision of [`config`]; part of the cache directory name.
pub const PROFILE_REV: u32 = 3;

/// The wasmtime release tenet is built against (pinned in Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// Names the engine profile; artifacts live under a directory of this name,
/// so an upgrade of tenet never loads stale artifacts: it misses instead.
pub fn profile_id() -> String {
    format!(
        "wasmtime-{WASMTIME_VERSION}-fuel-epoch-{}-r{PROFILE_REV}",
        std::env::consts::ARCH
    )
}

/// The engine configuration shared by the CNI binary and the compiler.
pub fn config() -> Config {
    let mut c = Config::new();
    // Deterministic CPU budget per stage; no watchdog thread needed, and the
    // same input always burns the same fuel, so `policy test` can report it.
    c.consume_fuel(true);
    // A wall-clock backstop on top of fuel (rev 3): host calls and lifting
    // are charged in fuel, but a deadline per stage and per pipeline is what
    // an operator can reason about. One ticker thread per exec increments
    // the epoch (`pipeline.rs`); each call sets its deadline in ticks.
    c.epoch_interruption(true);
    c.wasm_component_model(true);
    // Keep guests free of proposals we do not audit (threads are not even
    // compiled into this wasmtime build).
    c.wasm_multi_memory(false);
    c.wasm_memory64(false);
    // Smaller artifacts, less to map and register per exec (rev 2):
    // - no `.eh_frame` (and no `__register_frame` per module): it only
    //   serves native unwinders, and tenet aborts on panic; wasmtime's own
    //   trap backtraces walk frame pointers and do not need it;
    // - no native-pc -> wasm-offset map: it only adds wasm offsets to trap
    //   backtraces. The trap itself, its kind and the stage are still
    //   reported.
    c.native_unwind_info(false);
    c.generate_address_map(false);
    c
}

/// Creates the engine. Cheap (tens of microseconds) without the pooling
/// allocator, which a one-shot process must not pay for.
pub fn new_engine() -> wasmtime::Result<Engine> {
    Engine::new(&config())
}

/// Compiles a component to a `.cwasm` for this profile (tenetctl only).
#[cfg(feature = "compiler")]
pub fn precompile(engine: &Engine, wasm: &[u8]) -> wasmtime::Result<Vec<u8>> {
    engine.precompile_component(wasm)
}
