//! Host bindings generated from `wit/policy.wit` (world `stage`).
//!
//! Kept private to the `policy` module: the rest of tenet speaks
//! [`crate::plan`] types, and `convert` translates at the boundary.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "stage",
});

pub use tenet::policy::host::Level;
pub use tenet::policy::types;
