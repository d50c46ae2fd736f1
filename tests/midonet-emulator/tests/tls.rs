//! Serving HTTPS (`EmulatorOptions::tls`), with a throwaway CA made by the
//! `openssl` command; the client side is rustls' blocking stream.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

use midonet_emulator::{AuthMode, Emulator, EmulatorOptions, StartError, TlsIdentity};
use tokio_rustls::rustls;

/// GET `/midonet-api/` over TLS, trusting only `ca`; the raw answer, or
/// the TLS error.
fn get_root(emu: &Emulator, ca: &std::path::Path) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(emu.addr()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "GET /midonet-api/ HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        emu.addr()
    );
    tls.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
        // The server closes without close_notify after `Connection: close`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
            Ok(String::from_utf8_lossy(&out).into_owned())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn serves_https_to_clients_that_trust_its_ca() {
    let d = tempfile::tempdir().unwrap();
    let (id, ca) = TlsIdentity::generate_with_openssl(d.path()).unwrap();
    let emu = Emulator::start(EmulatorOptions::default().auth(AuthMode::Mock).tls(id)).unwrap();
    assert!(emu.url().starts_with("https://127.0.0.1:"), "{}", emu.url());
    let answer = get_root(&emu, &ca).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Links in bodies use the scheme the client came in with.
    assert!(answer.contains("\"uri\":\"https://127.0.0.1:"), "{answer}");

    // A client trusting another CA gets no answer: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    let (_, other_ca) = TlsIdentity::generate_with_openssl(other.path()).unwrap();
    let e = get_root(&emu, &other_ca).unwrap_err();
    assert!(e.contains("certificate"), "{e}");

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = TcpStream::connect(emu.addr()).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tcp.write_all(b"GET /midonet-api/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/1.1 200"), "{raw:?}");
    assert!(
        emu.journal().len() == 1,
        "only the good request reached the API"
    );
}

#[test]
fn an_unusable_identity_is_refused_at_start() {
    let bad = TlsIdentity {
        cert_chain_pem: b"nothing".to_vec(),
        key_pem: b"nothing".to_vec(),
    };
    match Emulator::start(EmulatorOptions::default().tls(bad)) {
        Err(StartError::Tls(m)) => assert!(m.contains("certificate"), "{m}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started with an unusable identity"),
    }
}
