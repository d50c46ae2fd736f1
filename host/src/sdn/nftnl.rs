//! One read-only nftables question asked over netlink, without forking
//! `nft`: does chain `<table>/<chain>` of family `inet` exist? ADD asks it on
//! its fast path (see `LinuxSdn::ensure_tenant`): a fork+exec of `nft` costs
//! milliseconds, the netlink round trip microseconds.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFPROTO_INET: u8 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;

fn attr(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let len = 4 + value.len() + 1;
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value.as_bytes());
    buf.push(0);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// The GETCHAIN request for `table`/`chain` (family inet).
fn request(table: &str, chain: &str, seq: u32) -> Vec<u8> {
    let mut body = vec![NFPROTO_INET, 0, 0, 0]; // nfgenmsg: family, version, res_id
    attr(&mut body, NFTA_CHAIN_TABLE, table);
    attr(&mut body, NFTA_CHAIN_NAME, chain);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// True when the chain exists in this thread's network namespace; false
/// when the kernel says it (or its table) does not; an error otherwise.
pub fn chain_exists(table: &str, chain: &str) -> io::Result<bool> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    let seq = 1;
    sock.send(&request(table, chain, seq), 0)?;
    let mut found = false;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > n {
                return Err(io::Error::other("truncated netlink reply"));
            }
            match kind {
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                    return match code {
                        0 => Ok(found),
                        c if -c == libc::ENOENT => Ok(false),
                        c => Err(io::Error::from_raw_os_error(-c)),
                    };
                }
                NLMSG_DONE => return Ok(found),
                _ => found = true,
            }
            off += (len + 3) & !3;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_well_formed() {
        let r = request("tenet", "fwd-tb-0123456789", 7);
        assert!(r.len().is_multiple_of(4));
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(
            u16::from_ne_bytes(r[4..6].try_into().unwrap()),
            (10 << 8) | 4
        );
        assert_eq!(r[16], NFPROTO_INET);
        // Attribute strings are NUL-terminated and padded.
        assert!(r.windows(6).any(|w| w == b"tenet\0"));
    }
}
