//! A complete stage: every pod goes to the tenant named in the settings.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::string::String;

use tenet_policy_sdk::{Plan, PolicyError, Request, Stage, export_stage};

/// Settings: `{ "tenant": "acme" }`. Unknown fields are refused, so a typo
/// is an error that names it rather than a silently ignored setting.
#[derive(serde::Deserialize, tenet_policy_sdk::JsonSchema)]
#[schemars(crate = "tenet_policy_sdk::schemars")]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// The tenant every pod belongs to.
    pub tenant: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            tenant: String::from("default"),
        }
    }
}

/// The stage.
pub struct Fixed;

impl Stage for Fixed {
    type Settings = Settings;

    fn validate(s: &Settings) -> Result<(), String> {
        if s.tenant.is_empty() {
            return Err(String::from("tenant: must not be empty"));
        }
        Ok(())
    }

    fn evaluate(_: &Request, s: &Settings, mut plan: Plan) -> Result<Plan, PolicyError> {
        plan.tenant = s.tenant.clone();
        Ok(plan)
    }
}

export_stage!(Fixed);
