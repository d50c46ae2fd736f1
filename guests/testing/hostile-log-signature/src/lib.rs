//! Hostile: imports `tenet:policy/host@0.1.0` whose `log` takes
//! `list<u8>` instead of `string` (no UTF-8 check, another lifting path).
//! tenet must refuse it when loading the pipeline (code 103).
// no_std on wasm32 (no WASI imports); natively an ordinary crate, so the
// workspace builds and lints on the host.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;

wit_bindgen::generate!({ path: "wit", world: "stage" });

use hostile_rt as _;

struct Bytes;

impl Guest for Bytes {
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_: Request, _: String, plan: Plan) -> Result<Plan, PolicyError> {
        tenet::policy::host::log(tenet::policy::host::Level::Info, &[0xff; 64]);
        Ok(plan)
    }
}

export!(Bytes);
