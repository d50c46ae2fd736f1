//! Records as stored in etcd: small JSON values, one per key.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ipam::pool::to_u128;
use crate::ipam::{Allocation, AttachmentKey, ClaimState};

/// `pool/<pool>`: a pool's geometry as first used (its tenant subnets are
/// carved from it; changing it while they exist is a pool conflict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PoolRec {
    pub supernet: IpNet,
    pub subnet_len: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// `subnet/<pool>/<tenant>`: the tenant's subnet in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SubnetRec {
    pub subnet: IpNet,
    pub created_ms: u64,
}

/// `block/<pool>/<tenant>/<node>/<cidr>`: a node-affine block of a tenant
/// subnet. Only confirmed allocations are in `used`; pending ones are the
/// leased `.../p/<ordinal>` keys beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BlockRec {
    /// The node the block is affine to (also a key segment).
    pub node: String,
    /// The block.
    pub cidr: IpNet,
    /// Bitmap of confirmed ordinals (offsets from the block's network
    /// address), as hex words.
    #[serde(with = "hex_words")]
    pub used: Vec<u64>,
    /// Ordinals released recently, with their release time (ms): they cool
    /// down before reuse.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub released: BTreeMap<u32, u64>,
    /// Next-fit cursor: the ordinal after the last one confirmed.
    #[serde(default)]
    pub cursor: u32,
}

impl BlockRec {
    pub fn new(node: &str, cidr: IpNet) -> Self {
        let bits = match cidr {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        } - u32::from(cidr.prefix_len());
        let size = 1usize << bits;
        BlockRec {
            node: node.to_owned(),
            cidr,
            used: vec![0; size.div_ceil(64)],
            released: BTreeMap::new(),
            cursor: 0,
        }
    }

    /// Addresses in the block.
    pub fn size(&self) -> u32 {
        let bits = match self.cidr {
            IpNet::V4(_) => 32,
            IpNet::V6(_) => 128,
        } - u32::from(self.cidr.prefix_len());
        1u32 << bits
    }

    pub fn is_used(&self, ord: u32) -> bool {
        let (w, b) = ((ord / 64) as usize, ord % 64);
        self.used.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    pub fn set_used(&mut self, ord: u32, on: bool) {
        let (w, b) = ((ord / 64) as usize, ord % 64);
        if self.used.len() <= w {
            self.used.resize(w + 1, 0);
        }
        if on {
            self.used[w] |= 1 << b;
        } else {
            self.used[w] &= !(1 << b);
        }
    }

    pub fn count_used(&self) -> usize {
        self.used.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Drops release records older than the cooldown.
    pub fn prune(&mut self, now_ms: u64, cooldown_ms: u64) {
        self.released
            .retain(|_, t| now_ms < t.saturating_add(cooldown_ms));
    }

    pub fn is_cooling(&self, ord: u32, now_ms: u64, cooldown_ms: u64) -> bool {
        self.released
            .get(&ord)
            .is_some_and(|t| now_ms < t.saturating_add(cooldown_ms))
    }

    /// The ordinal of `addr` in this block.
    pub fn ordinal(&self, addr: IpAddr) -> u32 {
        (to_u128(addr) - to_u128(self.cidr.network())) as u32
    }
}

mod hex_words {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(w: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let text: String = w.iter().map(|x| format!("{x:016x}")).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 16 != 0 {
            return Err(D::Error::custom("bitmap length is not a multiple of 16"));
        }
        (0..text.len() / 16)
            .map(|i| u64::from_str_radix(&text[i * 16..i * 16 + 16], 16).map_err(D::Error::custom))
            .collect()
    }
}

/// One address of a handle, with where its bit lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HandleAlloc {
    #[serde(flatten)]
    pub allocation: Allocation,
    /// Node the block is affine to (a borrowed block's owner, not ours).
    pub block_node: String,
    /// The block.
    pub block: IpNet,
    /// Ordinal in the block.
    pub ordinal: u32,
    /// A static or sticky address: it does not move the block's next-fit
    /// cursor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed: bool,
}

/// `handle/<container id>/<ifname>`: the owner record of an attachment.
/// Written under the claim's lease while pending, without one once
/// confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HandleRec {
    pub container_id: String,
    pub ifname: String,
    pub tenant: String,
    /// The node whose ADD made it: only this node's GC may free it.
    pub node: String,
    pub state: ClaimState,
    pub created_ms: u64,
    /// Stable owner for sticky addresses, if the request had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub allocations: Vec<HandleAlloc>,
}

impl HandleRec {
    pub fn key(&self, network: &str) -> AttachmentKey {
        AttachmentKey::new(network, self.container_id.clone(), self.ifname.clone())
    }

    pub fn allocations(&self) -> Vec<Allocation> {
        self.allocations
            .iter()
            .map(|a| a.allocation.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_bitmap_round_trips() {
        let mut b = BlockRec::new("n1", "10.0.0.0/26".parse().unwrap());
        assert_eq!((b.size(), b.used.len()), (64, 1));
        b.set_used(2, true);
        b.set_used(63, true);
        let json = serde_json::to_string(&b).unwrap();
        assert!(json.contains("8000000000000004"), "{json}");
        let back: BlockRec = serde_json::from_str(&json).unwrap();
        assert!(back.is_used(2) && back.is_used(63) && !back.is_used(3));
        assert_eq!(back.count_used(), 2);
        let v6 = BlockRec::new("n1", "fd00::/122".parse().unwrap());
        assert_eq!(v6.size(), 64);
        assert_eq!(v6.ordinal("fd00::5".parse().unwrap()), 5);
    }
}

/// `<prefix>/leases/<node>`: the lease this node's pending claims are
/// written under, shared by its ADDs while it has at least half a TTL left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct NodeLease {
    pub id: i64,
    /// When it expires at the latest (ms since the epoch, the granting
    /// node's clock: the same node reads it).
    pub expires_ms: u64,
}
