//! The HTTP/1.1 server: hyper on a current-thread tokio runtime owned by a
//! background thread. State lives behind one std mutex that is never held
//! across an `.await` (fault delays sleep with the lock released).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

use crate::api::ROOT;
use crate::control::{CONTROL_ROOT, Shared};
use crate::http::{Request, Response};

/// Bodies larger than this are refused (no MidoNet object comes close).
const MAX_BODY: usize = 1 << 20;

/// Serves every listener until `shutdown` fires (or its sender is dropped);
/// with `tls`, every connection is a TLS one.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    stops: Vec<watch::Receiver<bool>>,
    shared: Arc<Mutex<Shared>>,
    tls: Option<TlsAcceptor>,
    shutdown: oneshot::Receiver<()>,
) {
    for (i, (l, stop)) in listeners.into_iter().zip(stops).enumerate() {
        tokio::spawn(serve_endpoint(i, l, stop, shared.clone(), tls.clone()));
    }
    let _ = shutdown.await;
}

/// One listener. Once `stop` turns true the listener is closed (new
/// connections are refused) and its open connections are dropped.
async fn serve_endpoint(
    index: usize,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
    tls: Option<TlsAcceptor>,
) {
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio accepts the listener");
    loop {
        let mut conn_stop = stop.clone();
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let served = async {
                        match tls {
                            // A handshake the client aborts (it does not
                            // trust the certificate) just ends the connection.
                            Some(acceptor) => {
                                if let Ok(s) = acceptor.accept(stream).await {
                                    connection(s, shared, index, addr, "https").await;
                                }
                            }
                            None => connection(stream, shared, index, addr, "http").await,
                        }
                    };
                    tokio::select! {
                        _ = served => {}
                        _ = conn_stop.wait_for(|s| *s) => {}
                    }
                });
            }
        }
    }
}

/// Serves HTTP/1.1 on one (plain or TLS) connection.
async fn connection<S>(
    io: S,
    shared: Arc<Mutex<Shared>>,
    index: usize,
    addr: SocketAddr,
    scheme: &'static str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(shared.clone(), index, addr, scheme, req));
    // A client that hangs up mid-request is not an emulator error.
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

async fn handle(
    shared: Arc<Mutex<Shared>>,
    endpoint: usize,
    addr: SocketAddr,
    scheme: &'static str,
    req: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(to_hyper(Response::error(400, "unreadable request body"))),
    };
    if body.len() > MAX_BODY {
        return Ok(to_hyper(Response::error(413, "request body too large")));
    }
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| addr.to_string());
    let base = format!("{scheme}://{host}{ROOT}");
    let req = Request {
        endpoint,
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    };
    Ok(to_hyper(dispatch(&shared, &req, &base).await))
}

/// Control endpoints directly; API calls through faults, the API and the journal.
pub async fn dispatch(shared: &Mutex<Shared>, req: &Request, base: &str) -> Response {
    if req.path == CONTROL_ROOT || req.path.starts_with(&format!("{CONTROL_ROOT}/")) {
        return lock(shared).control(req, base);
    }
    let action = lock(shared).fault_for(req);
    if !action.delay.is_zero() {
        tokio::time::sleep(action.delay).await;
    }
    let mut s = lock(shared);
    let (resp, faulted) = match action.status {
        Some((status, msg)) if !action.after => (Response::error(status, msg), true),
        Some((status, msg)) => {
            s.api.handle(req, base);
            (Response::error(status, msg), true)
        }
        None => (s.api.handle(req, base), false),
    };
    s.record(req, resp.status, faulted);
    resp
}

/// The state stays usable after a panicking handler (a test double should
/// report, not wedge).
pub fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_hyper(r: Response) -> hyper::Response<Full<Bytes>> {
    let mut b = hyper::Response::builder().status(r.status);
    for (n, v) in &r.headers {
        b = b.header(n.as_str(), v.as_str());
    }
    b.body(Full::new(Bytes::from(r.body))).unwrap_or_else(|_| {
        let mut resp = hyper::Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
        resp
    })
}
