//! Hostile: `evaluate` allocates and touches memory until it fails. The host
//! must cap it at the stage's memory limit ("budget exceeded", code 102).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::vec::Vec;

use tenet_policy_sdk::{Plan, PolicyError, Request, Stage, export_stage};

/// The stage.
pub struct Hog;

impl Stage for Hog {
    type Settings = ();

    fn evaluate(_: &Request, _: &(), _: Plan) -> Result<Plan, PolicyError> {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = alloc::vec![0u8; 1 << 20];
            chunk[4096] = 1;
            chunks.push(core::hint::black_box(chunk));
        }
    }
}

export_stage!(Hog);
