//! `tenetctl midonet ls` and `tenetctl midonet check`: the MidoNet topology
//! tenet recorded (in etcd), with every object looked up in MidoNet, and the
//! differences between the two. Both read the tenet configuration
//! (`TENET_CONFIG`, `[midonet]` and `[etcd]`).

use std::io::Write;

use super::{CtlError, process_env};
use crate::config::Config;
use crate::sdn::MidonetSdn;
use crate::sdn::midonet::audit::Presence;

/// The `tenetctl midonet` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MidonetCmd {
    /// Show tenants' recorded topology, each object looked up in MidoNet.
    Ls(LsArgs),
    /// Compare the records with MidoNet: missing objects, orphaned objects
    /// and records. Exits 1 when they differ.
    Check,
}

/// Arguments of `tenetctl midonet ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
}

fn connect() -> Result<MidonetSdn, CtlError> {
    let cfg = Config::load(&process_env(), None).map_err(CtlError::from_err)?;
    MidonetSdn::connect(&cfg).map_err(|e| CtlError::Message(format!("midonet: {e}")))
}

fn io(e: std::io::Error) -> CtlError {
    CtlError::Message(format!("writing output: {e}"))
}

/// Runs a `tenetctl midonet` subcommand; returns the exit code.
pub fn run(cmd: &MidonetCmd, out: &mut dyn Write) -> Result<i32, CtlError> {
    let sdn = connect()?;
    match cmd {
        MidonetCmd::Ls(a) => ls(&sdn, a.tenant.as_deref(), out),
        MidonetCmd::Check => check(&sdn, out),
    }
}

/// `ls` on a connected backend.
pub fn ls(sdn: &MidonetSdn, tenant: Option<&str>, out: &mut dyn Write) -> Result<i32, CtlError> {
    let views = sdn.topology(tenant).map_err(CtlError::from_err)?;
    if views.is_empty() {
        writeln!(out, "no tenant topology recorded").map_err(io)?;
        return Ok(if tenant.is_some() { 1 } else { 0 });
    }
    for v in views {
        let r = &v.record;
        let (p, t) = r.link_addrs();
        writeln!(
            out,
            "tenant {:?}  {:?}  link {} (provider {p}, tenant {t})",
            r.tenant, r.phase, r.link
        )
        .map_err(io)?;
        for o in &v.objects {
            writeln!(out, "  {:<28} {}  {}", o.what, o.id, o.presence).map_err(io)?;
        }
        for b in &r.bridges {
            writeln!(
                out,
                "  subnet {} gateway {}  {:?}  bridge {}",
                b.subnet, b.gateway, b.phase, b.bridge
            )
            .map_err(io)?;
        }
        for (p, pr) in &v.ports {
            writeln!(
                out,
                "  port {}  {}  bridge {}  host {} {}  {}",
                p.key, p.port, p.bridge, p.host_id, p.interface, pr
            )
            .map_err(io)?;
        }
        let bad = v
            .objects
            .iter()
            .filter(|o| o.presence != Presence::Present)
            .count()
            + v.ports
                .iter()
                .filter(|(_, p)| *p != Presence::Present)
                .count();
        writeln!(
            out,
            "  {} objects, {} ports, {bad} not in MidoNet",
            v.objects.len(),
            v.ports.len()
        )
        .map_err(io)?;
    }
    Ok(0)
}

/// `check` on a connected backend: 0 when records and MidoNet agree, 1 when not.
pub fn check(sdn: &MidonetSdn, out: &mut dyn Write) -> Result<i32, CtlError> {
    let a = sdn.audit().map_err(CtlError::from_err)?;
    for m in &a.missing {
        writeln!(out, "missing: {m}").map_err(io)?;
    }
    for o in &a.orphaned {
        writeln!(out, "orphaned: {o}").map_err(io)?;
    }
    writeln!(
        out,
        "{} missing, {} orphaned",
        a.missing.len(),
        a.orphaned.len()
    )
    .map_err(io)?;
    Ok(if a.is_clean() { 0 } else { 1 })
}
