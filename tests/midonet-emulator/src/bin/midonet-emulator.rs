//! `midonet-emulator`: the MidoNet 5.x REST API emulator as a process, for
//! tests and scripts that drive the real `tenet` binary. The first stdout
//! line is `listening on http://127.0.0.1:PORT/midonet-api` (`https://`
//! with `--tls-cert`); it serves until killed. See the library docs for the API and control endpoints.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use midonet_emulator::{AuthMode, Emulator, EmulatorOptions, HostSpec, TlsIdentity, Uuid};

#[derive(Parser, Debug)]
#[command(about = "Strict MidoNet 5.x REST API emulator (loopback only)")]
struct Args {
    /// Address to listen on; must be loopback. Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A user `/login` accepts, as NAME:PASSWORD (repeatable; default admin:admin).
    #[arg(long = "user", value_parser = parse_user)]
    users: Vec<(String, String)>,
    /// A host in a tunnel zone, as ID=NAME (repeatable).
    #[arg(long = "host", value_parser = parse_host)]
    hosts: Vec<(Uuid, String)>,
    /// A host outside every tunnel zone, as ID=NAME (repeatable).
    #[arg(long = "host-outside-tunnel-zone", value_parser = parse_host)]
    hosts_outside: Vec<(Uuid, String)>,
    /// The provider router to pre-create.
    #[arg(long)]
    provider_router: Option<Uuid>,
    /// Name of the provider router.
    #[arg(long, default_value = "MidoNet Provider Router")]
    provider_router_name: String,
    /// Token lifetime in seconds (default: tokens never expire).
    #[arg(long)]
    token_lifetime_secs: Option<u64>,
    /// Accept every call without a token (MidoNet's MockAuthService).
    #[arg(long)]
    mock_auth: bool,
    /// A user `/login` accepts who lacks the admin role (every other call
    /// of theirs answers 401), as NAME:PASSWORD (repeatable).
    #[arg(long = "user-without-admin", value_parser = parse_user)]
    non_admin_users: Vec<(String, String)>,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Allow binding linked (interior) ports, as MidoNet 5.x does.
    #[arg(long)]
    allow_linked_port_binding: bool,
    /// Number of API endpoints sharing one state (the first on --listen,
    /// the others on free ports); one `listening on` line each, in order.
    #[arg(long, default_value_t = 1)]
    endpoints: usize,
}

fn parse_user(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((u, p)) if !u.is_empty() => Ok((u.to_string(), p.to_string())),
        _ => Err(format!("--user {s:?}: expected NAME:PASSWORD")),
    }
}

fn parse_host(s: &str) -> Result<(Uuid, String), String> {
    let (id, name) = s
        .split_once('=')
        .ok_or_else(|| format!("--host {s:?}: expected ID=NAME"))?;
    let id = Uuid::parse_str(id).map_err(|e| format!("--host {s:?}: ID is not a UUID: {e}"))?;
    Ok((id, name.to_string()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut opts = EmulatorOptions::default().listen(args.listen);
    opts.users = if args.users.is_empty() {
        vec![("admin".into(), "admin".into())]
    } else {
        args.users
    };
    for (id, name) in &args.hosts {
        opts = opts.host(HostSpec::new(*id, name));
    }
    for (id, name) in &args.hosts_outside {
        opts = opts.host(HostSpec::outside_tunnel_zone(*id, name));
    }
    if let Some(id) = args.provider_router {
        opts = opts.provider_router(id, &args.provider_router_name);
    }
    if let Some(s) = args.token_lifetime_secs {
        opts = opts.token_lifetime(Duration::from_secs(s));
    }
    if args.mock_auth {
        opts = opts.auth(AuthMode::Mock);
    }
    opts.non_admin_users = args.non_admin_users;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        match TlsIdentity::from_files(cert, key) {
            Ok(id) => opts = opts.tls(id),
            Err(e) => {
                eprintln!("midonet-emulator: --tls-cert/--tls-key: {e}");
                return ExitCode::from(2);
            }
        }
    }
    opts = opts.reject_linked_port_binding(!args.allow_linked_port_binding);
    opts = opts.endpoints(args.endpoints);
    let emu = match Emulator::start(opts) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("midonet-emulator: {e}");
            return ExitCode::from(2);
        }
    };
    let mut out = std::io::stdout().lock();
    for url in emu.urls() {
        if writeln!(out, "listening on {url}")
            .and_then(|_| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    drop(out);
    loop {
        std::thread::park();
    }
}
