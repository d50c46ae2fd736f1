//! The node daemon's wire format: a greeting, one request and one reply
//! per connection, length-prefixed binary frames (no escaping, no parser to
//! trust beyond bounds checks).
//!
//! The daemon speaks first: a reply frame that is either `Ready` (send the
//! request) or `Declined`. The client sends its request only once it has
//! `Ready`, so a daemon that accepts nothing (stopped, wedged) costs the
//! client a short wait and never an invocation run twice.
//!
//! Request: `TNT1`, the client's [`Identity`], the environment as
//! `count` then `len key len value` pairs, then `len stdin`. Reply:
//! `TNT1`, a kind byte (0 answered, 1 declined, 2 ready), the exit code
//! (i32), then `len text` (the CNI document, or why the daemon declined).
//! Integers are little-endian `u32` unless said otherwise; every length
//! is bounded by [`MAX_FRAME`] before anything is allocated.

use std::io::{self, Read, Write};

/// Every frame starts with this (and the client and daemon are the same
/// binary, which the identity checks: a format change never meets an old
/// peer).
const MAGIC: &[u8; 4] = b"TNT1";

/// The largest request or reply, in bytes: the CNI binary accepts 1 MiB
/// of stdin; the environment gets as much again.
pub const MAX_FRAME: usize = 2 << 20;

/// At most this many environment variables.
const MAX_ENV: usize = 4096;

/// A file's identity: device and inode, as `stat` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileId {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
}

/// Where the client runs, for the daemon to check it would act on the
/// same node, files and program (see [`super`]): each is the identity
/// of a file the client `stat`ed, `None` when it could not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Identity {
    /// `/proc/thread-self/ns/net`: the node namespace.
    pub netns: Option<FileId>,
    /// `/proc/self/ns/mnt`: how paths resolve.
    pub mntns: Option<FileId>,
    /// `/`: a chroot resolves paths differently too.
    pub root: Option<FileId>,
    /// `/proc/self/exe`: the program (an upgraded binary is a new file).
    pub exe: Option<FileId>,
    /// The working directory: relative paths in the environment or the
    /// network configuration resolve against it.
    pub cwd: Option<FileId>,
}

/// One CNI invocation, as the client received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Where the client runs.
    pub identity: Identity,
    /// The client's whole environment (CNI_* and tenet's own variables).
    pub env: Vec<(String, String)>,
    /// The network configuration, as read from stdin.
    pub stdin: Vec<u8>,
}

/// What the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The invocation ran: print `stdout` and exit with `exit_code`.
    Answered {
        /// The CNI document (empty for silent success).
        stdout: String,
        /// The exit code.
        exit_code: i32,
    },
    /// The daemon will not run this invocation (another node namespace,
    /// another binary, too busy): the client runs it itself.
    Declined(String),
    /// The daemon's greeting, before the request: it is serving this
    /// connection, send the request.
    Ready,
}

/// A frame that is not one of ours, or too large.
fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes `req` as one frame.
pub fn write_request(w: &mut impl Write, req: &Request) -> io::Result<()> {
    let mut buf = Vec::with_capacity(256 + req.stdin.len());
    buf.extend_from_slice(MAGIC);
    for id in [
        req.identity.netns,
        req.identity.mntns,
        req.identity.root,
        req.identity.exe,
        req.identity.cwd,
    ] {
        put_id(&mut buf, id);
    }
    put_u32(&mut buf, req.env.len());
    for (k, v) in &req.env {
        put_bytes(&mut buf, k.as_bytes());
        put_bytes(&mut buf, v.as_bytes());
    }
    put_bytes(&mut buf, &req.stdin);
    if buf.len() > MAX_FRAME {
        return Err(invalid(format!(
            "request of {} bytes, at most {MAX_FRAME}",
            buf.len()
        )));
    }
    w.write_all(&buf)
}

/// Reads one request frame (refusing anything over [`MAX_FRAME`]).
pub fn read_request(r: &mut impl Read) -> io::Result<Request> {
    let mut r = Bounded {
        inner: r,
        left: MAX_FRAME,
    };
    magic(&mut r)?;
    let identity = Identity {
        netns: get_id(&mut r)?,
        mntns: get_id(&mut r)?,
        root: get_id(&mut r)?,
        exe: get_id(&mut r)?,
        cwd: get_id(&mut r)?,
    };
    let n = get_u32(&mut r)?;
    if n > MAX_ENV {
        return Err(invalid(format!(
            "{n} environment variables, at most {MAX_ENV}"
        )));
    }
    let mut env = Vec::with_capacity(n);
    for _ in 0..n {
        let k = get_string(&mut r)?;
        let v = get_string(&mut r)?;
        env.push((k, v));
    }
    let stdin = get_bytes(&mut r)?;
    Ok(Request {
        identity,
        env,
        stdin,
    })
}

/// Writes `reply` as one frame.
pub fn write_reply(w: &mut impl Write, reply: &Reply) -> io::Result<()> {
    let (kind, code, text) = match reply {
        Reply::Answered { stdout, exit_code } => (0u8, *exit_code, stdout.as_str()),
        Reply::Declined(why) => (1u8, 0, why.as_str()),
        Reply::Ready => (2u8, 0, ""),
    };
    let mut buf = Vec::with_capacity(16 + text.len());
    buf.extend_from_slice(MAGIC);
    buf.push(kind);
    buf.extend_from_slice(&code.to_le_bytes());
    put_bytes(&mut buf, text.as_bytes());
    w.write_all(&buf)
}

/// Reads one reply frame.
pub fn read_reply(r: &mut impl Read) -> io::Result<Reply> {
    let mut r = Bounded {
        inner: r,
        left: MAX_FRAME,
    };
    magic(&mut r)?;
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let code = i32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let text = get_string(&mut r)?;
    match head[0] {
        0 => Ok(Reply::Answered {
            stdout: text,
            exit_code: code,
        }),
        1 => Ok(Reply::Declined(text)),
        2 => Ok(Reply::Ready),
        k => Err(invalid(format!("unknown reply kind {k}"))),
    }
}

/// A reader that fails once more than `left` bytes were asked for.
struct Bounded<'a, R> {
    inner: &'a mut R,
    left: usize,
}

impl<R: Read> Bounded<'_, R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > self.left {
            return Err(invalid(format!("frame over {MAX_FRAME} bytes")));
        }
        self.left -= buf.len();
        self.inner.read_exact(buf)
    }
}

fn magic<R: Read>(r: &mut Bounded<'_, R>) -> io::Result<()> {
    let mut m = [0u8; 4];
    r.read_exact(&mut m)?;
    if &m != MAGIC {
        return Err(invalid("not a tenet frame"));
    }
    Ok(())
}

fn put_u32(buf: &mut Vec<u8>, n: usize) {
    // Lengths over u32 never get here: frames are bounded far below.
    buf.extend_from_slice(&(n.min(u32::MAX as usize) as u32).to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_u32(buf, b.len());
    buf.extend_from_slice(b);
}

fn put_id(buf: &mut Vec<u8>, id: Option<FileId>) {
    match id {
        None => buf.push(0),
        Some(f) => {
            buf.push(1);
            buf.extend_from_slice(&f.dev.to_le_bytes());
            buf.extend_from_slice(&f.ino.to_le_bytes());
        }
    }
}

fn get_u32<R: Read>(r: &mut Bounded<'_, R>) -> io::Result<usize> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b) as usize)
}

fn get_u64<R: Read>(r: &mut Bounded<'_, R>) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn get_id<R: Read>(r: &mut Bounded<'_, R>) -> io::Result<Option<FileId>> {
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag)?;
    match tag[0] {
        0 => Ok(None),
        1 => Ok(Some(FileId {
            dev: get_u64(r)?,
            ino: get_u64(r)?,
        })),
        t => Err(invalid(format!("bad identity tag {t}"))),
    }
}

fn get_bytes<R: Read>(r: &mut Bounded<'_, R>) -> io::Result<Vec<u8>> {
    let n = get_u32(r)?;
    if n > r.left {
        return Err(invalid(format!("frame over {MAX_FRAME} bytes")));
    }
    let mut b = vec![0u8; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn get_string<R: Read>(r: &mut Bounded<'_, R>) -> io::Result<String> {
    String::from_utf8(get_bytes(r)?).map_err(|_| invalid("a string is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Request {
        Request {
            identity: Identity {
                netns: Some(FileId {
                    dev: 4,
                    ino: 4026531840,
                }),
                mntns: None,
                root: Some(FileId { dev: 2049, ino: 2 }),
                exe: Some(FileId {
                    dev: u64::MAX,
                    ino: 7,
                }),
                cwd: None,
            },
            env: vec![
                ("CNI_COMMAND".into(), "ADD".into()),
                ("EMPTY".into(), String::new()),
            ],
            stdin: br#"{"cniVersion":"1.1.0"}"#.to_vec(),
        }
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let req = sample();
        let mut buf = Vec::new();
        write_request(&mut buf, &req).unwrap();
        assert_eq!(read_request(&mut buf.as_slice()).unwrap(), req);
        for reply in [
            Reply::Answered {
                stdout: "{}".into(),
                exit_code: 0,
            },
            Reply::Answered {
                stdout: String::new(),
                exit_code: -1,
            },
            Reply::Declined("another node namespace".into()),
            Reply::Ready,
        ] {
            let mut buf = Vec::new();
            write_reply(&mut buf, &reply).unwrap();
            assert_eq!(read_reply(&mut buf.as_slice()).unwrap(), reply);
        }
    }

    #[test]
    fn truncated_foreign_and_oversized_frames_are_refused() {
        let mut buf = Vec::new();
        write_request(&mut buf, &sample()).unwrap();
        // Every strict prefix is incomplete.
        for n in 0..buf.len() {
            assert!(read_request(&mut &buf[..n]).is_err(), "prefix {n}");
        }
        let mut foreign = buf.clone();
        foreign[0] = b'X';
        assert!(
            read_request(&mut foreign.as_slice())
                .unwrap_err()
                .to_string()
                .contains("not a tenet frame")
        );
        // A length claiming more than a frame may hold is refused before
        // anything that large is allocated.
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[0, 0, 0, 0, 0]);
        huge.extend_from_slice(&1u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = read_request(&mut huge.as_slice()).unwrap_err();
        assert!(e.to_string().contains("frame over"), "{e}");
        let mut many = MAGIC.to_vec();
        many.extend_from_slice(&[0, 0, 0, 0, 0]);
        many.extend_from_slice(&(MAX_ENV as u32 + 1).to_le_bytes());
        let e = read_request(&mut many.as_slice()).unwrap_err();
        assert!(e.to_string().contains("environment variables"), "{e}");
        // A request the client would send over the bound is refused there.
        let big = Request {
            stdin: vec![b' '; MAX_FRAME],
            ..sample()
        };
        assert!(write_request(&mut Vec::new(), &big).is_err());
        let mut bad_kind = Vec::new();
        write_reply(&mut bad_kind, &Reply::Declined(String::new())).unwrap();
        bad_kind[4] = 9;
        assert!(read_reply(&mut bad_kind.as_slice()).is_err());
    }
}
