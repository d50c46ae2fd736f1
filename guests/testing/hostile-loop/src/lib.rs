//! Hostile: `evaluate` never returns. The host must stop it with the stage's
//! fuel budget ("budget exceeded", CNI code 102).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use tenet_policy_sdk::{Plan, PolicyError, Request, Stage, export_stage};

/// The stage.
pub struct Spin;

impl Stage for Spin {
    type Settings = ();

    fn evaluate(_: &Request, _: &(), _: Plan) -> Result<Plan, PolicyError> {
        let mut x: u64 = 0;
        loop {
            // black_box keeps the loop from being optimised away.
            x = core::hint::black_box(x.wrapping_add(1));
        }
    }
}

export_stage!(Spin);
