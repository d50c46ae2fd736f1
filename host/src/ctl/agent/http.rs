//! The agent's HTTP endpoint: a minimal HTTP/1.1 server on std's
//! `TcpListener` for three GET routes.
//!
//! Why not hyper (in the tree through reqwest): hyper's server side needs
//! its `server`/`http1` features, hyper-util's server glue and a tokio
//! runtime to answer three fixed GETs; a scraper sends one small request
//! per connection. Here every limit is explicit: a request head of at most
//! [`MAX_HEAD`] bytes, a whole-head deadline ([`HEAD_DEADLINE`], against
//! slowloris clients that trickle bytes), a write timeout, at most
//! [`MAX_CONNS`] connections served at once (more get a 503 and are
//! closed), one request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8192;
/// The whole request head must arrive within this.
pub const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNS: usize = 16;
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    /// A plain-text response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The routes: a path (query string removed) to a response.
pub type Handler = dyn Fn(&str) -> Response + Send + Sync;

/// Binds `addr` (port 0: any free port; see the returned address).
pub fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    Ok((l, local))
}

/// Serves connections on `listener` forever, each on its own thread.
pub fn serve(listener: TcpListener, handler: Arc<Handler>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(mut stream) = conn else { continue };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = write_response(&mut stream, &Response::text(503, "busy\n"), false);
            continue;
        }
        let handler = Arc::clone(&handler);
        let active2 = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("agent-http".into())
            .spawn(move || {
                handle(stream, &*handler);
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What reading a request head gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A well-formed GET or HEAD of `path`.
    Get {
        /// The path, without its query string.
        path: String,
        /// HEAD: no body in the answer.
        head: bool,
    },
    /// Anything else, answered with this.
    Refused(Response),
}

/// Reads one request head from `r`, within [`HEAD_DEADLINE`] and
/// [`MAX_HEAD`].
pub fn read_request(r: &mut TcpStream) -> Request {
    let deadline = Instant::now() + HEAD_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            buf.truncate(end);
            break;
        }
        if buf.len() >= MAX_HEAD {
            return Request::Refused(Response::text(431, "request head too large\n"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || r.set_read_timeout(Some(left)).is_err() {
            return Request::Refused(Response::text(408, "request head too slow\n"));
        }
        match r.read(&mut chunk) {
            Ok(0) => return Request::Refused(Response::text(400, "incomplete request\n")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Request::Refused(Response::text(408, "request head too slow\n"));
            }
            Err(_) => return Request::Refused(Response::text(400, "read error\n")),
        }
    }
    parse_head(&buf)
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses a request head (without its final blank line).
pub fn parse_head(head: &[u8]) -> Request {
    let bad = |m: &str| Request::Refused(Response::text(400, format!("{m}\n")));
    let Ok(text) = std::str::from_utf8(head) else {
        return bad("request head is not UTF-8");
    };
    let line = text.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad("malformed request line");
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Request::Refused(Response::text(505, "HTTP/1.0 or 1.1 only\n"));
    }
    if !target.starts_with('/') {
        return bad("request target must be a path");
    }
    for h in text.split("\r\n").skip(1) {
        if !h.contains(':') {
            return bad("malformed header line");
        }
    }
    let path = target.split('?').next().unwrap_or_default().to_owned();
    match method {
        "GET" => Request::Get { path, head: false },
        "HEAD" => Request::Get { path, head: true },
        _ => Request::Refused(Response::text(405, "GET or HEAD only\n")),
    }
}

fn handle(mut stream: TcpStream, handler: &Handler) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (resp, with_body) = match read_request(&mut stream) {
        Request::Get { path, head } => (handler(&path), !head),
        Request::Refused(r) => (r, true),
    };
    let _ = write_response(&mut stream, &resp, with_body);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn write_response(w: &mut TcpStream, r: &Response, with_body: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(r.body.as_bytes());
    }
    w.write_all(&out)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        let (l, addr) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let h: Arc<Handler> = Arc::new(|p: &str| match p {
            "/healthz" => Response::text(200, "ok\n"),
            _ => Response::text(404, "not found\n"),
        });
        std::thread::spawn(move || serve(l, h));
        addr
    }

    fn exchange(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(req);
        // Done sending: a cut-short head reads as end of input.
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn routes_and_malformed_requests_get_their_status() {
        let a = server();
        let ok = exchange(a, b"GET /healthz?x=1 HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nok\n"), "{ok}");
        let head = exchange(a, b"HEAD /healthz HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        for (req, status) in [
            (&b"GET /nope HTTP/1.1\r\n\r\n"[..], "404"),
            (b"POST /healthz HTTP/1.1\r\n\r\n", "405"),
            (b"GET /healthz HTTP/2.0\r\n\r\n", "505"),
            (b"GET healthz HTTP/1.1\r\n\r\n", "400"),
            (b"GET  /healthz HTTP/1.1\r\n\r\n", "400"),
            (b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n", "400"),
            (b"\xff\xfe / HTTP/1.1\r\n\r\n", "400"),
            (b"GET /healthz HTTP/1.1\r\n", "400"),
        ] {
            let got = exchange(a, req);
            assert!(
                got.starts_with(&format!("HTTP/1.1 {status} ")),
                "{:?} → {got}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        let a = server();
        let mut req = b"GET /healthz HTTP/1.1\r\nX: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_HEAD * 4));
        let got = exchange(a, &req);
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
    }

    #[test]
    fn a_slow_client_is_cut_off_and_others_are_still_served() {
        let a = server();
        // Trickles a byte at a time, never finishing its head.
        let mut slow = TcpStream::connect(a).unwrap();
        slow.write_all(b"GET /hea").unwrap();
        let trickle = std::thread::spawn(move || {
            let mut out = String::new();
            for _ in 0..20 {
                if slow.write_all(b"a").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = slow.read_to_string(&mut out);
            out
        });
        // Meanwhile a scrape is answered.
        let ok = exchange(a, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        let got = trickle.join().unwrap();
        assert!(got.starts_with("HTTP/1.1 408 "), "slow client got {got:?}");
    }

    #[test]
    fn connections_past_the_limit_get_503() {
        let a = server();
        // Idle connections that send nothing hold their slots.
        let idle: Vec<TcpStream> = (0..MAX_CONNS)
            .map(|_| TcpStream::connect(a).unwrap())
            .collect();
        // Accepted in order: these are past the idle ones.
        let got = exchange(a, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
        drop(idle);
    }
}
