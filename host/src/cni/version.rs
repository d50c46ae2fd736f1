//! CNI versions tenet speaks and the VERSION reply.

/// Supported CNI versions, oldest first. Results are converted to the
/// version of the request's configuration.
pub const SUPPORTED: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version (used when the request's is unknown).
pub const LATEST: &str = "1.1.0";

/// Parses "a.b.c" into a comparable triple.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// True when `v` is at least `min` (both well-formed).
pub fn at_least(v: &str, min: &str) -> bool {
    matches!((parse(v), parse(min)), (Some(a), Some(b)) if a >= b)
}

/// True when tenet speaks `v`.
pub fn is_supported(v: &str) -> bool {
    SUPPORTED.contains(&v)
}

/// The VERSION reply: the input version when supported, else [`LATEST`].
pub fn version_reply(stdin_version: Option<&str>) -> String {
    let v = stdin_version.filter(|v| is_supported(v)).unwrap_or(LATEST);
    serde_json::json!({ "cniVersion": v, "supportedVersions": SUPPORTED }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_versions() {
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(!at_least("x", "0.4.0"));
        assert_eq!(parse("1.0"), None);
        assert_eq!(parse("1.0.0.0"), None);
        let v: serde_json::Value = serde_json::from_str(&version_reply(Some("0.4.0"))).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        let v: serde_json::Value = serde_json::from_str(&version_reply(Some("9.9.9"))).unwrap();
        assert_eq!(v["cniVersion"], LATEST);
        assert_eq!(
            v["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED.len()
        );
    }
}
