//! Hostile: `evaluate` traps (a panic becomes `unreachable`). The host must
//! report a trap naming the stage (code 101).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use tenet_policy_sdk::{Plan, PolicyError, Request, Stage, export_stage};

/// The stage.
pub struct Boom;

impl Stage for Boom {
    type Settings = ();

    fn evaluate(req: &Request, _: &(), _: Plan) -> Result<Plan, PolicyError> {
        let v: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
        // An out-of-bounds index the compiler cannot prove: a panic, a trap.
        let i = core::hint::black_box(req.ifname.len());
        Ok(Plan {
            tenant: alloc::format!("{}", v[i]),
            ..unreachable_plan()
        })
    }
}

fn unreachable_plan() -> Plan {
    panic!("unreachable")
}

export_stage!(Boom);
