//! Hostile: imports `tenet:policy/host@0.1.0` with an extra function
//! (`exec`) next to `log`, under the allowed interface name, and calls it.
//! tenet must refuse it when loading the pipeline (code 103), whatever the
//! stage's failure policy, not trap when it runs.
// no_std on wasm32 (no WASI imports); natively an ordinary crate, so the
// workspace builds and lints on the host.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;

wit_bindgen::generate!({ path: "wit", world: "stage" });

use hostile_rt as _;

struct Extra;

impl Guest for Extra {
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_: Request, _: String, mut plan: Plan) -> Result<Plan, PolicyError> {
        plan.tenant = tenet::policy::host::exec("cat /etc/shadow");
        Ok(plan)
    }
}

export!(Extra);
