//! The nftables questions and changes ADD makes on its fast path, over
//! netlink, without forking `nft` (a fork+exec costs milliseconds, a netlink
//! round trip microseconds):
//!
//! - does chain `<table>/<chain>` exist? ([`chain_exists`], NFT_MSG_GETCHAIN);
//! - add or delete set elements, all of them in one nfnetlink batch, so they
//!   land atomically ([`apply_elems`], NFT_MSG_NEWSETELEM / DELSETELEM);
//! - list a set's elements ([`dump_elems`], NFT_MSG_GETSETELEM), for CHECK
//!   and for DEL without a record.
//!
//! The message encoders are pure functions (unit-tested byte for byte); the
//! keys follow nftables' register layout: every component of a concatenated
//! key is padded to 4 bytes, an `ifname` is 16 bytes (IFNAMSIZ), NUL-padded.

use std::cell::RefCell;
use std::io;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::netns::MacAddr;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFT_JUMP`, as the kernel's verdict code (a negative `int`).
const NFT_JUMP: i32 = -3;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const IFNAMSIZ: usize = 16;

/// The nftables address families tenet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet` (IPv4 and IPv6 hooks).
    Inet = 1,
    /// `bridge` (frames entering a bridge).
    Bridge = 7,
}

/// One set element to add or delete: the set and the element's key, and for
/// verdict maps the chain the element jumps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    /// The table's family.
    pub family: Family,
    /// The table.
    pub table: String,
    /// The set or map.
    pub set: String,
    /// The key, in register layout (see the module docs).
    pub key: Vec<u8>,
    /// For a verdict map: `jump <chain>`.
    pub jump: Option<String>,
}

fn ifname_bytes(name: &str) -> [u8; IFNAMSIZ] {
    let mut b = [0u8; IFNAMSIZ];
    let n = name.len().min(IFNAMSIZ - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

/// The key `ifname` (type `ifname`).
pub fn key_ifname(name: &str) -> Vec<u8> {
    ifname_bytes(name).to_vec()
}

/// The key `ifname . ether_addr`.
pub fn key_ifname_mac(name: &str, mac: MacAddr) -> Vec<u8> {
    let mut k = key_ifname(name);
    k.extend_from_slice(&mac.0);
    k.extend_from_slice(&[0, 0]);
    k
}

/// The key `ifname . ipv4_addr` or `ifname . ipv6_addr`.
pub fn key_ifname_ip(name: &str, ip: IpAddr) -> Vec<u8> {
    let mut k = key_ifname(name);
    match ip {
        IpAddr::V4(a) => k.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => k.extend_from_slice(&a.octets()),
    }
    k
}

/// The interface name at the start of a key.
pub fn key_ifname_of(key: &[u8]) -> Option<&str> {
    let head = key.get(..IFNAMSIZ)?;
    let end = head.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    std::str::from_utf8(&head[..end]).ok()
}

fn attr_bytes(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    pad(buf);
}

fn attr_str(buf: &mut Vec<u8>, kind: u16, value: &str) {
    let mut v = value.as_bytes().to_vec();
    v.push(0);
    attr_bytes(buf, kind, &v);
}

fn pad(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Starts a nested attribute; [`nest_end`] writes its length.
fn nest_start(buf: &mut Vec<u8>, kind: u16) -> usize {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    at
}

fn nest_end(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at) as u16;
    buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// One netlink message: header, nfgenmsg (`family`, version 0, `res_id`)
/// and `attrs`.
fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + attrs.len());
    m.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.push(family);
    m.push(0);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// The GETCHAIN request for `table`/`chain` (family inet).
fn chain_request(table: &str, chain: &str, seq: u32) -> Vec<u8> {
    let mut a = Vec::new();
    attr_str(&mut a, NFTA_CHAIN_TABLE, table);
    attr_str(&mut a, NFTA_CHAIN_NAME, chain);
    message(
        nft_type(NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        Family::Inet as u8,
        0,
        &a,
    )
}

/// One batch adding (`add`) or deleting `elems`: BATCH_BEGIN, one
/// NEWSETELEM/DELSETELEM per set (each acked), BATCH_END. Returns the bytes
/// and the number of acks to expect.
pub fn batch(elems: &[Elem], add: bool, seq: u32) -> (Vec<u8>, usize) {
    let mut out = message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let mut acks = 0;
    // Group consecutive elements of one set into one message.
    let mut i = 0;
    while i < elems.len() {
        let first = &elems[i];
        let mut j = i;
        while j < elems.len()
            && elems[j].family == first.family
            && elems[j].table == first.table
            && elems[j].set == first.set
        {
            j += 1;
        }
        let mut a = Vec::new();
        attr_str(&mut a, NFTA_SET_ELEM_LIST_TABLE, &first.table);
        attr_str(&mut a, NFTA_SET_ELEM_LIST_SET, &first.set);
        let list = nest_start(&mut a, NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in &elems[i..j] {
            let el = nest_start(&mut a, NFTA_LIST_ELEM);
            let k = nest_start(&mut a, NFTA_SET_ELEM_KEY);
            attr_bytes(&mut a, NFTA_DATA_VALUE, &e.key);
            nest_end(&mut a, k);
            if add && let Some(chain) = &e.jump {
                let d = nest_start(&mut a, NFTA_SET_ELEM_DATA);
                let v = nest_start(&mut a, NFTA_DATA_VERDICT);
                attr_bytes(&mut a, NFTA_VERDICT_CODE, &NFT_JUMP.to_be_bytes());
                attr_str(&mut a, NFTA_VERDICT_CHAIN, chain);
                nest_end(&mut a, v);
                nest_end(&mut a, d);
            }
            nest_end(&mut a, el);
        }
        nest_end(&mut a, list);
        let (kind, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        acks += 1;
        out.extend(message(
            nft_type(kind),
            flags,
            seq + acks as u32,
            first.family as u8,
            0,
            &a,
        ));
        i = j;
    }
    out.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + acks as u32 + 1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));
    (out, acks)
}

/// The GETSETELEM dump request of one set.
fn dump_request(family: Family, table: &str, set: &str, seq: u32) -> Vec<u8> {
    let mut a = Vec::new();
    attr_str(&mut a, NFTA_SET_ELEM_LIST_TABLE, table);
    attr_str(&mut a, NFTA_SET_ELEM_LIST_SET, set);
    message(
        nft_type(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family as u8,
        0,
        &a,
    )
}

fn socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    Ok(sock)
}

thread_local! {
    /// This thread's socket and the network namespace it was opened in.
    static SOCKET: RefCell<Option<(u64, Socket)>> = const { RefCell::new(None) };
}

/// Runs `f` with this thread's netfilter socket, opened on first use and
/// kept for later requests in the same network namespace.
///
/// Why kept: releasing a NETLINK_NETFILTER socket waits for nf_tables'
/// pending destroy work (an RCU grace period, 10-13 ms measured here) when
/// set elements were deleted, so a DEL that closed a socket after each
/// port's guard paid it twice (docs/perf.md). Kept open, the work finishes
/// while the veths are deleted, and the release at exit finds nothing to
/// wait for. A socket is kept only after a request that read its whole
/// answer: after an error, unread acks may be left in it, so it is dropped.
fn with_socket<T>(f: impl FnOnce(&Socket) -> io::Result<T>) -> io::Result<T> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let sock = match SOCKET.with(|c| c.borrow_mut().take()) {
        Some((ino, s)) if ino == ns => s,
        _ => socket()?,
    };
    let r = f(&sock);
    if r.is_ok() {
        SOCKET.with(|c| *c.borrow_mut() = Some((ns, sock)));
    }
    r
}

/// Netlink messages in `buf[..n]`: (type, payload after the 16-byte header).
fn messages(buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        if len < 16 || off + len > buf.len() {
            return Err(io::Error::other("truncated netlink reply"));
        }
        out.push((kind, &buf[off + 16..off + len]));
        off += (len + 3) & !3;
    }
    Ok(out)
}

fn error_code(payload: &[u8]) -> io::Result<i32> {
    payload
        .get(..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or_else(|| io::Error::other("short netlink error message"))
}

/// True when the chain exists in this thread's network namespace; false
/// when the kernel says it (or its table) does not; an error otherwise.
pub fn chain_exists(table: &str, chain: &str) -> io::Result<bool> {
    with_socket(|sock| chain_exists_on(sock, table, chain))
}

fn chain_exists_on(sock: &Socket, table: &str, chain: &str) -> io::Result<bool> {
    sock.send(&chain_request(table, chain, 1), 0)?;
    let mut found = false;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        for (kind, payload) in messages(&buf[..n])? {
            match kind {
                NLMSG_ERROR => {
                    return match error_code(payload)? {
                        0 => Ok(found),
                        c if -c == libc::ENOENT => Ok(false),
                        c => Err(io::Error::from_raw_os_error(-c)),
                    };
                }
                NLMSG_DONE => return Ok(found),
                _ => found = true,
            }
        }
    }
}

/// Adds (`add`) or deletes `elems` in one atomic batch. Re-adding an
/// identical element is success; deleting a missing one fails the whole
/// batch with `ENOENT` (see [`delete_elems`]).
pub fn apply_elems(elems: &[Elem], add: bool) -> io::Result<()> {
    if elems.is_empty() {
        return Ok(());
    }
    with_socket(|sock| apply_elems_on(sock, elems, add))
}

fn apply_elems_on(sock: &Socket, elems: &[Elem], add: bool) -> io::Result<()> {
    let (msg, mut acks) = batch(elems, add, 1);
    sock.send(&msg, 0)?;
    let mut first_err = None;
    let mut buf = vec![0u8; 1 << 16];
    while acks > 0 {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        for (kind, payload) in messages(&buf[..n])? {
            if kind == NLMSG_ERROR {
                acks = acks.saturating_sub(1);
                let c = error_code(payload)?;
                if c != 0 && first_err.is_none() {
                    first_err = Some(io::Error::from_raw_os_error(-c));
                }
            }
        }
        // After an error the kernel aborts the batch; the acks of the
        // messages it did not reach may never come.
        if first_err.is_some() {
            break;
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Deletes `elems`, tolerating those already gone: one batch, and element by
/// element when the batch meets a missing one.
pub fn delete_elems(elems: &[Elem]) -> io::Result<()> {
    match apply_elems(elems, false) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            for e in elems {
                match apply_elems(std::slice::from_ref(e), false) {
                    Err(x) if x.raw_os_error() == Some(libc::ENOENT) => {}
                    r => r?,
                }
            }
            Ok(())
        }
        r => r,
    }
}

/// Walks attributes in `buf`: (kind without flags, value).
fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
    out
}

/// The keys of the elements in one NEWSETELEM message's attributes.
fn parse_elems(payload: &[u8], out: &mut Vec<Vec<u8>>) {
    // payload: nfgenmsg (4 bytes), then attributes.
    let Some(body) = payload.get(4..) else { return };
    for (kind, v) in attrs(body) {
        if kind != NFTA_SET_ELEM_LIST_ELEMENTS {
            continue;
        }
        for (k, el) in attrs(v) {
            if k != NFTA_LIST_ELEM {
                continue;
            }
            for (ek, ev) in attrs(el) {
                if ek == NFTA_SET_ELEM_KEY {
                    for (dk, dv) in attrs(ev) {
                        if dk == NFTA_DATA_VALUE {
                            out.push(dv.to_vec());
                        }
                    }
                }
            }
        }
    }
}

/// The keys of every element of a set; an empty list when the set or its
/// table does not exist.
pub fn dump_elems(family: Family, table: &str, set: &str) -> io::Result<Vec<Vec<u8>>> {
    with_socket(|sock| dump_elems_on(sock, family, table, set))
}

fn dump_elems_on(
    sock: &Socket,
    family: Family,
    table: &str,
    set: &str,
) -> io::Result<Vec<Vec<u8>>> {
    sock.send(&dump_request(family, table, set, 1), 0)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = sock.recv(&mut &mut buf[..], 0)?;
        for (kind, payload) in messages(&buf[..n])? {
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    return match error_code(payload)? {
                        0 => Ok(out),
                        c if -c == libc::ENOENT => Ok(out),
                        c => Err(io::Error::from_raw_os_error(-c)),
                    };
                }
                _ => parse_elems(payload, &mut out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }

    #[test]
    fn chain_request_is_well_formed() {
        let r = chain_request("tenet", "fwd-tb-0123456789ab", 7);
        assert!(r.len().is_multiple_of(4));
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(u16_at(&r, 4), (10 << 8) | 4);
        assert_eq!(r[16], Family::Inet as u8);
        // Attribute strings are NUL-terminated and padded.
        assert!(r.windows(6).any(|w| w == b"tenet\0"));
    }

    #[test]
    fn keys_follow_the_register_layout() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let k = key_ifname_mac("tn1", mac);
        // As `nft --debug=netlink add element bridge t s { "tn1" . 02:00:00:00:00:01 }`
        // prints it: 16 bytes of name, 6 of MAC, 2 of padding.
        assert_eq!(k.len(), 24);
        assert_eq!(&k[..4], b"tn1\0");
        assert_eq!(&k[16..], &[2, 0, 0, 0, 0, 1, 0, 0]);
        let k4 = key_ifname_ip("tn1", "10.0.0.1".parse().unwrap());
        assert_eq!(k4.len(), 20);
        assert_eq!(&k4[16..], &[10, 0, 0, 1]);
        let k6 = key_ifname_ip("tn1", "fe80::1".parse().unwrap());
        assert_eq!(k6.len(), 32);
        assert_eq!(k6[16], 0xfe);
        assert_eq!(key_ifname_of(&k6), Some("tn1"));
        assert_eq!(
            key_ifname_of(&key_ifname("tn0123456789ab")),
            Some("tn0123456789ab")
        );
        assert_eq!(key_ifname_of(&[1, 2]), None);
    }

    #[test]
    fn batch_groups_by_set_and_counts_acks() {
        let e = |set: &str, key: Vec<u8>, jump: Option<&str>| Elem {
            family: Family::Inet,
            table: "tenet".into(),
            set: set.into(),
            key,
            jump: jump.map(str::to_owned),
        };
        let elems = [
            e(
                "port_v4",
                key_ifname_ip("tn1", "10.0.0.1".parse().unwrap()),
                None,
            ),
            e(
                "port_v4",
                key_ifname_ip("tn1", "10.0.0.2".parse().unwrap()),
                None,
            ),
            e("svc_from", key_ifname("tn1"), Some("svc-tb-x")),
        ];
        let (b, acks) = batch(&elems, true, 100);
        assert_eq!(acks, 2);
        let msgs = messages(&b).unwrap();
        let kinds: Vec<u16> = msgs.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                (10 << 8) | NFT_MSG_NEWSETELEM,
                (10 << 8) | NFT_MSG_NEWSETELEM,
                NFNL_MSG_BATCH_END
            ]
        );
        // BATCH_BEGIN names the nftables subsystem (res_id, big endian).
        assert_eq!(&msgs[0].1[2..4], &10u16.to_be_bytes());
        let mut keys = Vec::new();
        parse_elems(msgs[1].1, &mut keys);
        assert_eq!(keys, [elems[0].key.clone(), elems[1].key.clone()]);
        // The verdict map element carries `jump svc-tb-x`.
        assert!(msgs[2].1.windows(9).any(|w| w == b"svc-tb-x\0"));
        assert!(msgs[2].1.windows(4).any(|w| w == (-3i32).to_be_bytes()));
        // A delete carries keys only.
        let (d, _) = batch(&elems[2..], false, 1);
        let msgs = messages(&d).unwrap();
        assert_eq!(msgs[1].0, (10 << 8) | NFT_MSG_DELSETELEM);
        assert!(!msgs[1].1.windows(9).any(|w| w == b"svc-tb-x\0"));
        assert_eq!(batch(&[], true, 1).1, 0);
    }
}
