//! CNI_ARGS: `K=V;K2=V2`.
//!
//! The reference Go parser rejects unknown keys unless `IgnoreUnknown` is
//! set. Every real runtime sets it (kubelet added it precisely so strict
//! plugins stop rejecting the K8S_* keys), and tenet never acts on keys it
//! does not know, so unknown keys are always accepted and passed to policy
//! stages as they are.

use super::error::{CniError, code};
use crate::plan::Kv;

/// Parsed CNI_ARGS, in the order received (runtimes do not keep an order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// Every pair except `IgnoreUnknown`.
    pub pairs: Vec<Kv>,
}

impl CniArgs {
    /// Parses the variable's value; a pair without `=` is an error naming it.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "invalid CNI_ARGS",
                    format!("{part:?} is not KEY=VALUE"),
                ));
            };
            if k.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "invalid CNI_ARGS",
                    format!("{part:?} has an empty key"),
                ));
            }
            if k != "IgnoreUnknown" {
                pairs.push(Kv::new(k, v));
            }
        }
        Ok(CniArgs { pairs })
    }

    /// The value of `key`, when present and non-empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| kv.value.as_str())
            .filter(|v| !v.is_empty())
    }

    /// K8S_POD_NAMESPACE.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }

    /// K8S_POD_NAME.
    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }

    /// K8S_POD_UID.
    pub fn pod_uid(&self) -> Option<&str> {
        self.get("K8S_POD_UID")
    }

    /// K8S_POD_INFRA_CONTAINER_ID.
    pub fn infra_container_id(&self) -> Option<&str> {
        self.get("K8S_POD_INFRA_CONTAINER_ID")
    }

    /// `IP` (podman `--ip`).
    pub fn ip(&self) -> Option<&str> {
        self.get("IP")
    }

    /// `MAC` (podman `--mac-address`).
    pub fn mac(&self) -> Option<&str> {
        self.get("MAC")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_and_podman_args_in_any_order() {
        let a = CniArgs::parse("K8S_POD_UID=5b1c;IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc").unwrap();
        assert_eq!(a.pod_namespace(), Some("team-a"));
        assert_eq!(a.pod_name(), Some("web-0"));
        assert_eq!(a.pod_uid(), Some("5b1c"));
        assert_eq!(a.infra_container_id(), Some("abc"));
        assert!(a.pairs.iter().all(|kv| kv.key != "IgnoreUnknown"));
        let p =
            CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.88.0.5;MAC=02:00:00:00:00:05")
                .unwrap();
        assert_eq!(
            (p.ip(), p.mac(), p.pod_namespace()),
            (Some("10.88.0.5"), Some("02:00:00:00:00:05"), None)
        );
    }

    #[test]
    fn unknown_keys_are_kept_and_bad_pairs_refused() {
        let a = CniArgs::parse("FOO=bar;;EMPTY=").unwrap();
        assert_eq!(a.pairs.len(), 2);
        assert_eq!(a.get("EMPTY"), None);
        assert_eq!(CniArgs::parse("FOO").unwrap_err().code, code::INVALID_ENV);
        assert_eq!(CniArgs::parse("=v").unwrap_err().code, code::INVALID_ENV);
        assert!(CniArgs::parse("").unwrap().pairs.is_empty());
    }
}
