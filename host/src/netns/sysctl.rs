//! Pod sysctls. `/proc/sys/net` shows the namespace of the thread that opens
//! it, so these writes only ever run on a helper thread inside the pod
//! ([`super::guard::run_in`]); the node's sysctls are never written.

use std::path::PathBuf;

use super::NetnsError;

/// The path under `/proc/sys` for `key`. Keys use dots
/// (`net.ipv4.conf.eth0.rp_filter`) or, for interface names that contain a
/// dot, slashes (`net/ipv4/conf/eth0.100/rp_filter`). Only `net` keys exist
/// per namespace, so anything else is refused here as well as by the plan
/// validator.
pub(crate) fn sysctl_path(key: &str) -> Result<PathBuf, NetnsError> {
    let bad = |why: &str| NetnsError::InvalidInput(format!("sysctl key {key:?}: {why}"));
    let parts: Vec<&str> = if key.contains('/') {
        key.split('/').collect()
    } else {
        key.split('.').collect()
    };
    if parts.first() != Some(&"net") || parts.len() < 3 {
        return Err(bad("only net.* keys are set in a pod"));
    }
    for p in &parts {
        if p.is_empty() || *p == "." || *p == ".." || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("malformed component"));
        }
    }
    let mut path = PathBuf::from("/proc/sys");
    path.extend(parts);
    Ok(path)
}

/// Validates every key first, so a bad key fails before anything is written.
pub(crate) fn paths(
    sysctls: &[(String, String)],
) -> Result<Vec<(PathBuf, &str, &str)>, NetnsError> {
    sysctls
        .iter()
        .map(|(k, v)| {
            if v.is_empty() || v.contains('\n') {
                return Err(NetnsError::InvalidInput(format!(
                    "sysctl {k:?}: value must be one non-empty line"
                )));
            }
            Ok((sysctl_path(k)?, k.as_str(), v.as_str()))
        })
        .collect()
}

/// Writes the sysctls in the calling thread's namespace. Only call this on a
/// thread that is inside the pod.
pub(crate) fn write_here(items: &[(PathBuf, &str, &str)]) -> Result<(), NetnsError> {
    for (path, key, value) in items {
        tracing::debug!(key, value, "pod sysctl");
        std::fs::write(path, value.as_bytes()).map_err(|source| NetnsError::Sysctl {
            key: (*key).to_owned(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_sys_net_only() {
        assert_eq!(
            sysctl_path("net.ipv4.conf.eth0.rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0/rp_filter")
        );
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
        );
        for bad in [
            "kernel.panic",
            "net",
            "net.ipv4",
            "net..ipv4.x",
            "net/ipv4/../../kernel/panic",
            "net/ipv4/./x",
            "vm.overcommit_memory",
            "net.ipv4.conf.eth 0.x",
        ] {
            let e = sysctl_path(bad).unwrap_err();
            assert_eq!(e.cni_code(), crate::cni::codes::INVALID_CONFIG, "{bad}");
        }
    }

    #[test]
    fn values_must_be_one_line() {
        let ok = vec![("net.ipv4.ip_forward".to_owned(), "1".to_owned())];
        assert_eq!(paths(&ok).unwrap().len(), 1);
        for v in ["", "1\n0"] {
            let bad = vec![("net.ipv4.ip_forward".to_owned(), v.to_owned())];
            assert!(paths(&bad).is_err());
        }
    }
}
