//! The key layout under `<prefix>/ipam/` (see the module docs for what each
//! key holds). Every name that comes from a request or a runtime is escaped,
//! so a `/` in a container id or pool name can never reach into another
//! record's key space.

use ipnet::IpNet;

use crate::ipam::AttachmentKey;

/// Escapes everything but `[A-Za-z0-9._:-]` as `%XX`, so names never contain
/// the `/` that separates key segments.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`esc`]; `None` for a malformed escape.
pub(super) fn unesc(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    /// `<prefix>/ipam/`.
    root: String,
    /// `<prefix>/leases/`.
    leases: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_end_matches('/');
        Keys {
            root: format!("{p}/ipam/"),
            leases: format!("{p}/leases/"),
        }
    }

    /// The record of `node`'s current claim lease.
    pub fn node_lease(&self, node: &str) -> String {
        format!("{}{}", self.leases, esc(node))
    }

    /// Everything tenet's IPAM keeps.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn net(&self, n: &str) -> String {
        format!("{}{}/", self.root, esc(n))
    }

    /// Network name from a key under [`Keys::root`].
    pub fn network_of(&self, key: &str) -> Option<String> {
        let rest = key.strip_prefix(&self.root)?;
        unesc(rest.split('/').next()?)
    }

    pub fn pools(&self, n: &str) -> String {
        format!("{}pool/", self.net(n))
    }

    pub fn pool(&self, n: &str, pool: &str) -> String {
        format!("{}{}", self.pools(n), esc(pool))
    }

    pub fn subnets(&self, n: &str) -> String {
        format!("{}subnet/", self.net(n))
    }

    pub fn subnet(&self, n: &str, pool: &str, tenant: &str) -> String {
        format!("{}{}/{}", self.subnets(n), esc(pool), esc(tenant))
    }

    pub fn carves(&self, n: &str, pool: &str) -> String {
        format!("{}carve/{}/", self.net(n), esc(pool))
    }

    pub fn carve(&self, n: &str, pool: &str, subnet: IpNet) -> String {
        format!("{}{}", self.carves(n, pool), esc(&subnet.to_string()))
    }

    pub fn claims(&self, n: &str, pool: &str, tenant: &str) -> String {
        format!("{}claim/{}/{}/", self.net(n), esc(pool), esc(tenant))
    }

    pub fn claim(&self, n: &str, pool: &str, tenant: &str, block: IpNet) -> String {
        format!(
            "{}{}",
            self.claims(n, pool, tenant),
            esc(&block.to_string())
        )
    }

    /// Every block of a tenant subnet (all nodes), with their pending keys.
    pub fn blocks(&self, n: &str, pool: &str, tenant: &str) -> String {
        format!("{}block/{}/{}/", self.net(n), esc(pool), esc(tenant))
    }

    /// All blocks of a network.
    pub fn all_blocks(&self, n: &str) -> String {
        format!("{}block/", self.net(n))
    }

    /// The blocks affine to `node`, with their pending keys.
    pub fn node_blocks(&self, n: &str, pool: &str, tenant: &str, node: &str) -> String {
        format!("{}{}/", self.blocks(n, pool, tenant), esc(node))
    }

    pub fn block(&self, n: &str, pool: &str, tenant: &str, node: &str, block: IpNet) -> String {
        format!(
            "{}{}",
            self.node_blocks(n, pool, tenant, node),
            esc(&block.to_string())
        )
    }

    /// The pending key of ordinal `ord` in the block at `block_key`.
    pub fn pend(block_key: &str, ord: u32) -> String {
        format!("{block_key}/p/{ord}")
    }

    pub fn handles(&self, n: &str) -> String {
        format!("{}handle/", self.net(n))
    }

    pub fn handle(&self, k: &AttachmentKey) -> String {
        format!(
            "{}{}/{}",
            self.handles(&k.network),
            esc(&k.container_id),
            esc(&k.ifname)
        )
    }

    pub fn sticky(&self, n: &str, pool: &str, tenant: &str, owner: &str) -> String {
        format!(
            "{}sticky/{}/{}/{}",
            self.net(n),
            esc(pool),
            esc(tenant),
            esc(owner)
        )
    }
}

/// What a key under a block prefix is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BlockKey {
    /// `<...>/<node>/<cidr>`: the block itself.
    Block { node: String, block_key: String },
    /// `<...>/<node>/<cidr>/p/<ord>`: a pending claim in it.
    Pend { block_key: String, ord: u32 },
}

/// Classifies `key`, found under `tenant_prefix` ([`Keys::blocks`]).
pub(super) fn parse_block_key(tenant_prefix: &str, key: &str) -> Option<BlockKey> {
    let rest = key.strip_prefix(tenant_prefix)?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [node, _cidr] => Some(BlockKey::Block {
            node: unesc(node)?,
            block_key: key.to_owned(),
        }),
        [_, _, "p", ord] => Some(BlockKey::Pend {
            block_key: key[..key.len() - ord.len() - 3].to_owned(),
            ord: ord.parse().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_round_trips_and_keeps_slashes_out() {
        for s in ["a", "a/b", "10.0.0.0/26", "%", "né", "fd00::/64", ""] {
            let e = esc(s);
            assert!(!e.contains('/'), "{e}");
            assert_eq!(unesc(&e).as_deref(), Some(s));
        }
        assert_eq!(unesc("%zz"), None);
    }

    #[test]
    fn block_keys_parse() {
        let k = Keys::new("/tenet/");
        let p = k.blocks("n", "pods", "red");
        let b = k.block("n", "pods", "red", "node/1", "10.0.0.0/26".parse().unwrap());
        assert_eq!(b, "/tenet/ipam/n/block/pods/red/node%2F1/10.0.0.0%2F26");
        assert_eq!(
            parse_block_key(&p, &b),
            Some(BlockKey::Block {
                node: "node/1".into(),
                block_key: b.clone()
            })
        );
        assert_eq!(
            parse_block_key(&p, &Keys::pend(&b, 7)),
            Some(BlockKey::Pend {
                block_key: b.clone(),
                ord: 7
            })
        );
        assert_eq!(k.network_of(&b).as_deref(), Some("n"));
    }
}
