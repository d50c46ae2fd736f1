//! `tenetctl`: run, test, compile and inspect tenet policy pipelines.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tenet::ctl::{self, CtlError};

/// Operator and policy-author CLI for tenet.
#[derive(Debug, Parser)]
#[command(name = "tenetctl", version, about)]
struct Cli {
    /// Log filter for tenetctl's own logs (stderr).
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Run a pipeline on a request and print the plan after each stage.
    Plan(Box<ctl::plan::PlanArgs>),
    /// The embedded default end to end on a throwaway node namespace.
    Demo(ctl::demo::DemoArgs),
    /// Work with policy modules.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Inspect and audit the MidoNet topology tenet recorded.
    #[command(subcommand)]
    Midonet(ctl::midonet::MidonetCmd),
    /// Install tenet on this node: binaries, conflist, pipeline, modules, artifacts.
    Install(Box<ctl::install::InstallArgs>),
    /// Look at and reconcile the address store (local or etcd).
    #[command(subcommand)]
    Ipam(ctl::ipam::IpamCmd),
    /// The node agent: keeps artifacts current, collects attachments whose
    /// pod sandbox is gone (CRI), serves /metrics, /readyz and /healthz.
    Agent(Box<ctl::agent::AgentArgs>),
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Run golden cases (request + settings -> expected plan or error).
    Test(ctl::golden::TestArgs),
    /// Precompile a pipeline's modules into the cache and validate settings.
    Compile(ctl::compile::CompileArgs),
    /// Precompile one module into the cache (run by `tenet` on a cache miss).
    #[command(hide = true)]
    CompileModule(ctl::compile::CompileModuleArgs),
    /// Show a module's world, imports, digest, size, metadata, settings
    /// schema and artifact status.
    Inspect(ctl::inspect::InspectArgs),
    /// Create a policy module crate (stage, typed settings, schema, golden
    /// cases) that builds and passes `policy test` as generated.
    New(ctl::new::NewArgs),
    /// Time and fuel per stage over N runs of a pipeline.
    Bench(ctl::bench::BenchArgs),
    /// Publish a module to an OCI registry as a Wasm artifact; prints the
    /// pinned reference (oci://…@sha256:…).
    Push(ctl::oci::PushArgs),
    /// Sign a pushed module, cosign-compatible (ECDSA P-256 key, PEM).
    Sign(ctl::oci::SignArgs),
    /// Fetch a module from an OCI registry after checking its digests and
    /// its signature, into a module dir.
    Pull(ctl::oci::PullArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .init();
    let mut out = std::io::stdout().lock();
    let result: Result<i32, CtlError> = match &cli.command {
        Top::Plan(a) => ctl::plan::run(a, &mut out),
        Top::Demo(a) => ctl::demo::run(a, &mut out),
        Top::Install(a) => ctl::install::run(a, &mut out),
        Top::Policy(PolicyCmd::Test(a)) => ctl::golden::run(a, &mut out),
        Top::Policy(PolicyCmd::Compile(a)) => ctl::compile::run(a, &mut out),
        Top::Policy(PolicyCmd::CompileModule(a)) => ctl::compile::run_module(a),
        Top::Policy(PolicyCmd::Inspect(a)) => ctl::inspect::run(a, &mut out),
        Top::Policy(PolicyCmd::New(a)) => ctl::new::run(a, &mut out),
        Top::Policy(PolicyCmd::Bench(a)) => ctl::bench::run(a, &mut out),
        Top::Policy(PolicyCmd::Push(a)) => ctl::oci::push(a, &mut out),
        Top::Policy(PolicyCmd::Sign(a)) => ctl::oci::sign(a, &mut out),
        Top::Policy(PolicyCmd::Pull(a)) => ctl::oci::pull(a, &mut out),
        Top::Midonet(c) => ctl::midonet::run(c, &mut out),
        Top::Ipam(c) => ctl::ipam::run(c, &mut out),
        Top::Agent(a) => ctl::agent::run(a, &mut out),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("tenetctl: {e}");
            ExitCode::from(2)
        }
    }
}
