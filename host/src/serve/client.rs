//! The thin client: what `tenet` does first on every invocation. It touches
//! nothing of the pipeline, the dataplane or the stores, so that when the
//! daemon answers, the exec is short and small.

use std::io::{BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::wire::{self, Reply, Request};
use crate::cni::{self, CniError, code};
use crate::commands;

/// How long the client waits for the daemon's answer once the request is
/// sent. Longer than any lock or store timeout an invocation waits for
/// (10 s, 30 s for etcd), shorter than a runtime's own (containerd: 4 min).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long writing the request may take (the daemon reads it at once).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What became of the invocation.
#[derive(Debug)]
pub enum Forwarded {
    /// The daemon ran it (or it may have, in part: a code 11 reply).
    Answered(commands::Reply),
    /// Run it here: no daemon, not ours, or it declined (the reason, for
    /// the exec's log).
    RunHere(Option<String>),
}

/// Hands the invocation to the daemon at the socket `env` names
/// ([`super::socket_path`]), or says to run it here.
pub fn forward(env: &[(String, String)], stdin: &[u8]) -> Forwarded {
    // VERSION needs nothing the daemon holds.
    if env
        .iter()
        .any(|(k, v)| k == "CNI_COMMAND" && v == "VERSION")
    {
        return Forwarded::RunHere(None);
    }
    let Some(path) = super::socket_path(env) else {
        return Forwarded::RunHere(None);
    };
    // Missing, refused (a stale socket of a stopped daemon), not
    // permitted: no daemon for us.
    let Ok(stream) = UnixStream::connect(&path) else {
        return Forwarded::RunHere(None);
    };
    // Only a daemon of our own uid, or root, gets the invocation: a socket
    // someone else bound could otherwise answer for the node.
    let euid = nix::unistd::geteuid().as_raw();
    match getsockopt(&stream, PeerCredentials) {
        Ok(c) if c.uid() == euid || c.uid() == 0 => {}
        Ok(c) => {
            eprintln!(
                "tenet: not using {}: served by uid {}, not root or {euid}",
                path.display(),
                c.uid()
            );
            return Forwarded::RunHere(None);
        }
        Err(_) => return Forwarded::RunHere(None),
    }
    let req = Request {
        identity: super::identity(),
        env: env.to_vec(),
        stdin: stdin.to_vec(),
    };
    // Nothing has run until the daemon has the whole request: a failure
    // to send it leaves the invocation to us.
    let sent = stream.set_write_timeout(Some(SEND_TIMEOUT)).and_then(|()| {
        let mut w = BufWriter::new(&stream);
        wire::write_request(&mut w, &req)?;
        w.flush()
    });
    if sent.is_err() {
        return Forwarded::RunHere(None);
    }
    let answer = stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| wire::read_reply(&mut BufReader::new(&stream)));
    match answer {
        Ok(Reply::Answered { stdout, exit_code }) => {
            Forwarded::Answered(commands::Reply { stdout, exit_code })
        }
        Ok(Reply::Declined(why)) => Forwarded::RunHere(Some(why)),
        Err(e) => {
            // It may have run in part: as after an exec that crashed, the
            // runtime retries (DEL, then ADD) and the journal covers it.
            let err = CniError::new(
                code::TRY_AGAIN_LATER,
                "the tenet daemon did not answer",
                format!("{}: {e}", path.display()),
            );
            Forwarded::Answered(commands::Reply {
                stdout: err.to_json(&cni::error_version(stdin)),
                exit_code: 1,
            })
        }
    }
}
