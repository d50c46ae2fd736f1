//! `midonet-emulator`: the MidoNet 5.x REST API emulator as a process, for
//! tests and scripts that drive the real `tenet` binary. The first stdout
//! line is `listening on http://127.0.0.1:PORT/midonet-api`; it serves
//! until killed. See the library docs for the API and control endpoints.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use midonet_emulator::{ApiProfile, AuthMode, Emulator, EmulatorOptions, HostSpec, Uuid};

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
    /// Also accept the 2015 media types Router-v2, Bridge-v1, Port-v2.
    #[arg(long)]
    legacy_media_types: bool,
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
    if args.legacy_media_types {
        opts = opts.profile(ApiProfile::Legacy2015);
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
