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

/// How long the client waits for the daemon's greeting before running the
/// invocation itself. The accept loop greets at once; a daemon that is
/// stopped or wedged never does, and its socket still takes connections.
const GREET_TIMEOUT: Duration = Duration::from_secs(2);

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
    let mut reader = BufReader::new(&stream);
    // Nothing is sent before the daemon says it is serving us: one that
    // does not, within the bound, gets nothing to run.
    let greeting = stream
        .set_read_timeout(Some(GREET_TIMEOUT))
        .and_then(|()| wire::read_reply(&mut reader));
    match greeting {
        Ok(Reply::Ready) => {}
        Ok(Reply::Declined(why)) => return Forwarded::RunHere(Some(why)),
        Ok(Reply::Answered { .. }) => {
            return Forwarded::RunHere(Some("the daemon answered before the request".into()));
        }
        Err(e) => {
            return Forwarded::RunHere(Some(format!("no greeting from the daemon: {e}")));
        }
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
        .and_then(|()| wire::read_reply(&mut reader));
    match answer {
        Ok(Reply::Answered { stdout, exit_code }) => {
            Forwarded::Answered(commands::Reply { stdout, exit_code })
        }
        Ok(Reply::Declined(why)) => Forwarded::RunHere(Some(why)),
        failed => {
            // It may have run in part: as after an exec that crashed, the
            // runtime retries (DEL, then ADD) and the journal covers it.
            let why = match failed {
                Err(e) => e.to_string(),
                _ => "a second greeting instead of an answer".to_owned(),
            };
            let err = CniError::new(
                code::TRY_AGAIN_LATER,
                "the tenet daemon did not answer",
                format!("{}: {why}", path.display()),
            );
            Forwarded::Answered(commands::Reply {
                stdout: err.to_json(&cni::error_version(stdin)),
                exit_code: 1,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn env_for(socket: &std::path::Path) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".into(), "ADD".into()),
            (
                super::super::SOCKET_ENV.into(),
                socket.to_str().unwrap().into(),
            ),
        ]
    }

    /// A daemon stand-in at `socket` for one connection: greets, reads the
    /// request, sends `answer` (none: closes without one); returns the
    /// request it read.
    fn greeting_daemon(
        socket: &std::path::Path,
        answer: Option<Reply>,
    ) -> std::thread::JoinHandle<Request> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            wire::write_reply(&mut &conn, &Reply::Ready).unwrap();
            let req = wire::read_request(&mut BufReader::new(&conn)).unwrap();
            if let Some(a) = answer {
                wire::write_reply(&mut &conn, &a).unwrap();
            }
            req
        })
    }

    #[test]
    fn a_daemon_that_never_greets_gets_nothing_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tenet.sock");
        // Bound and listening, never accepting: a stopped daemon's socket
        // still takes connections into its backlog.
        let listener = UnixListener::bind(&socket).unwrap();
        match forward(&env_for(&socket), b"{}") {
            Forwarded::RunHere(Some(why)) => assert!(why.contains("no greeting"), "{why}"),
            other => panic!("expected to run it here, got {other:?}"),
        }
        // The client never sent its request: the connection holds nothing.
        let (mut conn, _) = listener.accept().unwrap();
        let mut sent = Vec::new();
        conn.read_to_end(&mut sent).unwrap();
        assert!(sent.is_empty(), "{} bytes were sent", sent.len());
    }

    #[test]
    fn the_request_follows_the_greeting_and_the_answer_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tenet.sock");
        let daemon = greeting_daemon(
            &socket,
            Some(Reply::Answered {
                stdout: "{\"ok\":true}".into(),
                exit_code: 0,
            }),
        );
        let env = env_for(&socket);
        match forward(&env, b"{\"cniVersion\":\"1.1.0\"}") {
            Forwarded::Answered(r) => {
                assert_eq!((r.stdout.as_str(), r.exit_code), ("{\"ok\":true}", 0));
            }
            other => panic!("expected an answer, got {other:?}"),
        }
        let req = daemon.join().unwrap();
        assert_eq!(req.env, env);
        assert_eq!(req.stdin, b"{\"cniVersion\":\"1.1.0\"}");
        assert_eq!(req.identity, super::super::identity());
    }

    #[test]
    fn a_daemon_that_goes_silent_after_the_request_gets_code_11() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tenet.sock");
        // Takes the request, then goes away without an answer.
        let daemon = greeting_daemon(&socket, None);
        match forward(&env_for(&socket), b"{}") {
            Forwarded::Answered(r) => {
                assert_eq!(r.exit_code, 1);
                let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
                assert_eq!(v["code"], code::TRY_AGAIN_LATER, "{v}");
            }
            other => panic!("expected code 11, got {other:?}"),
        }
        daemon.join().unwrap();
    }
}
