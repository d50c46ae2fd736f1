//! Hostile: a std guest that reads the environment and a file, so the
//! component imports `wasi:cli/environment` and `wasi:filesystem`. tenet
//! must refuse it when loading the pipeline (code 103), before it runs.

wit_bindgen::generate!({ path: "../../../wit", world: "stage" });

struct Snoop;

impl Guest for Snoop {
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_: Request, _: String, mut plan: Plan) -> Result<Plan, PolicyError> {
        let home = std::env::var("HOME").unwrap_or_default();
        let shadow = std::fs::read("/etc/shadow").map(|b| b.len()).unwrap_or(0);
        plan.tenant = format!("{home}{shadow}");
        Ok(plan)
    }
}

export!(Snoop);
