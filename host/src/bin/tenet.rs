//! `tenet`: the CNI plugin binary. Thin: read env and stdin, hand them to
//! the node daemon when one serves this node (`tenet serve`, see
//! [`tenet::serve`]) or run them here, print one JSON document on stdout,
//! exit with its code. Logs never go to stdout.

use std::io::Write;

use tenet::cni;
use tenet::serve::client::Forwarded;

/// Largest network configuration accepted on stdin.
const MAX_STDIN: usize = 1 << 20;

fn main() {
    let mut args = std::env::args_os().skip(1);
    if let Some(first) = args.next() {
        // Runtimes exec plugins without arguments: any is `tenet serve`.
        std::process::exit(serve_main(&first, args));
    }
    // Release builds abort on panic; still answer the runtime in CNI form.
    std::panic::set_hook(Box::new(|info| {
        let e = cni::CniError::new(
            cni::code::INTERNAL,
            "internal error",
            format!("tenet panicked: {info}"),
        );
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", e.to_json(cni::version::LATEST));
        let _ = out.flush();
        eprintln!("tenet: {info}");
    }));
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let stdin = match cni::read_stdin(std::io::stdin().lock(), MAX_STDIN) {
        Ok(b) => b,
        Err(e) => {
            println!("{}", e.to_json(cni::version::LATEST));
            std::process::exit(1);
        }
    };
    let reply = match tenet::serve::client::forward(&env, &stdin) {
        Forwarded::Answered(reply) => reply,
        Forwarded::RunHere(declined) => {
            let why = declined.map(|w| format!("declined: {w}"));
            let ctx = tenet::commands::Context {
                daemon: why.as_deref(),
                ..Default::default()
            };
            tenet::commands::run_in(&env, &stdin, ctx)
        }
    };
    let mut out = std::io::stdout().lock();
    if !reply.stdout.is_empty() {
        let _ = writeln!(out, "{}", reply.stdout);
    }
    let _ = out.flush();
    std::process::exit(reply.exit_code);
}

/// `tenet serve [--socket PATH]`: the node daemon. Returns the exit code.
fn serve_main(first: &std::ffi::OsStr, rest: impl Iterator<Item = std::ffi::OsString>) -> i32 {
    let usage = "usage: tenet serve [--socket PATH]   (the node daemon; without arguments tenet is the CNI plugin)";
    if first != "serve" {
        eprintln!("tenet: unknown argument {first:?}\n{usage}");
        return 2;
    }
    let mut socket = std::path::PathBuf::from(tenet::serve::DEFAULT_SOCKET);
    let mut rest = rest;
    while let Some(a) = rest.next() {
        match a.to_str() {
            Some("--socket") => match rest.next() {
                Some(p) => socket = p.into(),
                None => {
                    eprintln!("tenet serve: --socket needs a path\n{usage}");
                    return 2;
                }
            },
            Some(s) if s.starts_with("--socket=") => socket = s["--socket=".len()..].into(),
            _ => {
                eprintln!("tenet serve: unknown argument {a:?}\n{usage}");
                return 2;
            }
        }
    }
    match tenet::serve::server::start(&socket) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tenet serve: {e}");
            1
        }
    }
}
