//! What tenet left on a node: the demo's and the tests' proof that DEL and
//! GC clean up. Looks at the calling thread's network namespace and at a
//! state directory.

use std::path::Path;
use std::process::Command;

use crate::ipam::{IpStore, LocalOptions, LocalStore};

/// Every tenet object still present: veth host ends (`tn…`) and tenant
/// bridges (`tb-…`) in this network namespace, tenant chains, map elements
/// and port guard elements in the `inet tenet` and `bridge tenet` tables,
/// address records in the local store under `state_dir`, attachment
/// records and lock files. Empty means clean.
pub fn leftovers(state_dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let links = run("ip", &["-j", "link", "show"])?;
    let links: serde_json::Value =
        serde_json::from_str(&links).map_err(|e| format!("ip -j link show: {e}"))?;
    for l in links.as_array().into_iter().flatten() {
        if let Some(n) = l["ifname"].as_str()
            && (is_tenet_name(n, "tn") || is_tenet_name(n, "tb-"))
        {
            out.push(format!("link {n}"));
        }
    }
    // The base chains match `tb-*` and `tn*`; a tenant's own chains and map
    // elements name its bridge (`tb-` and hex digits), a port's guard
    // elements its host end (`tn` and hex digits).
    for family in ["inet", "bridge"] {
        let rules = run("nft", &["list", "table", family, crate::sdn::TABLE]).unwrap_or_default();
        for line in rules.lines() {
            let names = |p: &str| {
                line.match_indices(p)
                    .any(|(i, _)| line[i + p.len()..].starts_with(|c: char| c.is_ascii_hexdigit()))
            };
            if names("tb-") || names("\"tn") {
                out.push(format!("nft {family}: {}", line.trim()));
            }
        }
    }
    if state_dir.is_dir() {
        let store =
            LocalStore::open(state_dir, LocalOptions::default()).map_err(|e| e.to_string())?;
        for (k, a, _) in store.list(None).map_err(|e| e.to_string())? {
            out.push(format!("address {} held by {k}", a.address));
        }
        for r in super::Records::new(state_dir)
            .list(None)
            .map_err(|e| e.to_string())?
        {
            out.push(format!("attachment record {}", r.key));
        }
        // Tenant and bridge-name locks go with their tenant's network.
        if let Ok(rd) = std::fs::read_dir(state_dir.join("locks")) {
            for e in rd.flatten() {
                out.push(format!("lock file {}", e.path().display()));
            }
        }
    }
    Ok(out)
}

/// `tn` + 12 hex digits (veth host ends), or `tb-` + 10 (bridges).
fn is_tenet_name(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_exactly() {
        assert!(is_tenet_name("tn0123456789ab", "tn"));
        assert!(is_tenet_name("tb-0123456789", "tb-"));
        assert!(!is_tenet_name("tunl0", "tn"));
        assert!(!is_tenet_name("tb-", "tb-"));
        assert!(!is_tenet_name("eth0", "tn"));
    }
}
