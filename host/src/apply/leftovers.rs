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
/// records and lock files; except idle tenant networks, the ones the Linux
/// backend keeps for a tenant's next pod (see [`idle_tenant_networks`]):
/// their bridge, their rules and their tenant lock. Empty means DEL and GC
/// left nothing of any attachment.
pub fn leftovers(state_dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let links = node_links()?;
    let idle = idle_bridges(&links);
    for l in links.as_array().into_iter().flatten() {
        if let Some(n) = l["ifname"].as_str()
            && (is_tenet_name(n, "tn") || is_tenet_name(n, "tb-"))
            && !idle.iter().any(|(b, _)| b == n)
        {
            out.push(format!("link {n}"));
        }
    }
    // The base chains match `tb-*` and `tn*`; a tenant's own chains and map
    // elements name its bridge (`tb-` and hex digits), a port's guard
    // elements its host end (`tn` and hex digits). A line that names only
    // idle bridges belongs to their networks.
    for family in ["inet", "bridge"] {
        let rules = run("nft", &["list", "table", family, crate::sdn::TABLE]).unwrap_or_default();
        for line in rules.lines() {
            let named = |p: &str| -> Vec<&str> {
                line.match_indices(p)
                    .filter_map(|(i, _)| {
                        let rest = &line[i + p.len()..];
                        let n = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
                        (n > 0).then(|| &line[i..i + p.len() + n])
                    })
                    .collect()
            };
            let bridges = named("tb-");
            let ports = named("\"tn");
            let only_idle = ports.is_empty()
                && !bridges.is_empty()
                && bridges.iter().all(|b| idle.iter().any(|(i, _)| i == b));
            if (!bridges.is_empty() || !ports.is_empty()) && !only_idle {
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
                let name = e.file_name().to_string_lossy().into_owned();
                let of_idle = idle.iter().any(|(_, lock)| {
                    lock.is_some() && name.strip_suffix(".lock") == lock.as_deref()
                });
                if !of_idle {
                    out.push(format!("lock file {}", e.path().display()));
                }
            }
        }
    }
    Ok(out)
}

/// The idle tenant networks in this network namespace: tenant bridges
/// (`tb-…` recording a tenant in their alias) with no port. The Linux
/// backend keeps them when a tenant's last pod leaves; CNI GC, the node
/// agent and an overlapping tenant's ADD remove them.
pub fn idle_tenant_networks() -> Result<Vec<String>, String> {
    Ok(idle_bridges(&node_links()?)
        .into_iter()
        .map(|(b, _)| b)
        .collect())
}

fn node_links() -> Result<serde_json::Value, String> {
    let links = run("ip", &["-j", "link", "show"])?;
    serde_json::from_str(&links).map_err(|e| format!("ip -j link show: {e}"))
}

/// Idle tenant bridges of an `ip -j link show` listing, each with the name
/// of its tenant's lock.
fn idle_bridges(links: &serde_json::Value) -> Vec<(String, Option<String>)> {
    let all = links.as_array().map(Vec::as_slice).unwrap_or_default();
    all.iter()
        .filter_map(|l| {
            let name = l["ifname"].as_str()?;
            let ident = l["ifalias"].as_str().and_then(crate::sdn::alias_ident)?;
            let used = all.iter().any(|p| p["master"].as_str() == Some(name));
            (is_tenet_name(name, "tb-") && !used)
                .then(|| (name.to_owned(), crate::sdn::lock_name_of_ident(ident)))
        })
        .collect()
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
