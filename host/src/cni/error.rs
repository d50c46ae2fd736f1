//! CNI errors: `{cniVersion, code, msg, details}` on stdout, non-zero exit.

use serde::Serialize;

/// Every error code tenet produces, in one place. Codes below 100 are the
/// spec's (SPEC §5 "Error"); 100 and up are tenet's own.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (msg names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing CNI_* environment variables (msg names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not valid JSON).
    pub const DECODE_FAILURE: u32 = 6;
    /// Invalid network configuration (or tenet configuration).
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing pods may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// A policy stage denied the pod.
    pub const POLICY_DENIED: u32 = 100;
    /// A policy stage trapped.
    pub const POLICY_TRAP: u32 = 101;
    /// A policy stage ran out of fuel or memory.
    pub const POLICY_BUDGET_EXCEEDED: u32 = 102;
    /// A policy module was refused (digest differs from its pin, forbidden imports).
    pub const POLICY_MODULE_REFUSED: u32 = 103;
    /// A plan broke a host invariant.
    pub const POLICY_INVALID_PLAN: u32 = 104;
    /// A stage refused its settings.
    pub const POLICY_INVALID_SETTINGS: u32 = 105;
    /// A stage found its input unusable, or the request exceeded input caps.
    pub const POLICY_INVALID_INPUT: u32 = 106;
    /// A stage reported an internal error.
    pub const POLICY_INTERNAL: u32 = 107;
    /// ADD with `TENET_DRY_RUN`: planned, not applied (the plan is in details).
    pub const DRY_RUN: u32 = 110;
    /// An internal error in tenet itself.
    pub const INTERNAL: u32 = 120;
}

/// A CNI error result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation.
    pub details: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    /// Builds an error.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error document, in the given CNI version.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::to_string(&Wire {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| {
            format!(
                "{{\"cniVersion\":\"{cni_version}\",\"code\":{},\"msg\":\"error\"}}",
                self.code
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_spec_shape() {
        let e = CniError::new(
            code::INVALID_ENV,
            "required env variables missing",
            "CNI_IFNAME",
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":4,"msg":"required env variables missing","details":"CNI_IFNAME"})
        );
        let v: serde_json::Value =
            serde_json::from_str(&CniError::new(7, "bad \"quote\"", "").to_json("0.3.1")).unwrap();
        assert_eq!(v.get("details"), None);
        assert_eq!(v["msg"], "bad \"quote\"");
        assert_eq!(e.to_string(), "required env variables missing: CNI_IFNAME");
    }
}
