//! `tenet`: the CNI plugin binary. Thin: read env and stdin, run, print one
//! JSON document on stdout, exit with its code. Logs never go to stdout.

use std::io::Write;

use tenet::cni;

/// Largest network configuration accepted on stdin.
const MAX_STDIN: usize = 1 << 20;

fn main() {
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
    let reply = tenet::commands::run(&env, &stdin);
    let mut out = std::io::stdout().lock();
    if !reply.stdout.is_empty() {
        let _ = writeln!(out, "{}", reply.stdout);
    }
    let _ = out.flush();
    std::process::exit(reply.exit_code);
}
