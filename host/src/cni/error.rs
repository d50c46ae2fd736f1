//! CNI errors: `{cniVersion, code, msg, details}` on stdout, non-zero exit.

use serde::Serialize;

/// The named codes (the table is [`super::codes`]); `code::X` reads well at
/// the call sites.
pub use super::codes as code;

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

/// `e` and its sources, each once: thiserror messages often embed their
/// source already (`"netlink add: {source}"`), so a source whose text is
/// already there is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
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
            serde_json::json!({"cniVersion":"1.0.0","code":code::INVALID_ENV,"msg":"required env variables missing","details":"CNI_IFNAME"})
        );
        let v: serde_json::Value = serde_json::from_str(
            &CniError::new(code::INVALID_CONFIG, "bad \"quote\"", "").to_json("0.3.1"),
        )
        .unwrap();
        assert_eq!(v.get("details"), None);
        assert_eq!(v["msg"], "bad \"quote\"");
        assert_eq!(e.to_string(), "required env variables missing: CNI_IFNAME");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("opening the store")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("netlink add: {0}")]
    struct Embeds(#[source] std::io::Error);

    #[test]
    fn the_chain_names_each_source_once() {
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(error_chain(&e), "opening the store: permission denied");
        let e = Embeds(std::io::Error::other("File exists"));
        assert_eq!(error_chain(&e), "netlink add: File exists");
    }
}
