//! The node daemon: `tenet serve` keeps pipelines loaded and answers the
//! CNI binary over a unix socket; `tenet` becomes a thin client of it when
//! it runs, and runs the invocation itself when it does not.
//!
//! # Why
//!
//! A one-shot exec pays, on every pod operation, for what does not change
//! between pods: the pipeline's artifact load and instantiation setup, the
//! guest code's first (cold) run and the page faults of a fresh process
//! with wasmtime in it (docs/perf.md). The daemon pays them once; the
//! client is a small fraction of the binary (no Wasm, no netlink, no
//! store), so its exec is short and its memory small. Multus's thick mode
//! and Kube-OVN's cniserver split the same way.
//!
//! # Same behaviour either way
//!
//! The daemon runs the very function the one-shot exec runs
//! ([`crate::commands::run`], with the client's environment and stdin),
//! under the same locks, journal and records, so a crash of the daemon is
//! a crash of an exec: the runtime retries and the journal covers it. The
//! only thing kept between invocations is loaded pipelines
//! ([`warm`]), each checked against its manifest and module files on every
//! use (a changed file is a new pipeline, as for an exec), and every run
//! instantiates fresh stores: no guest state survives a pod.
//!
//! # When the daemon answers, and when the client runs it itself
//!
//! The daemon acts in *its* node namespace and resolves paths in *its*
//! mount namespace, and it runs *its* build of tenet. It answers only a
//! client that runs in the same network namespace, mount namespace, root
//! and working directory, from the same binary file ([`wire::Identity`]);
//! anything else
//! is declined and the client runs the invocation itself. So a runtime in
//! another namespace (a test's scratch node, a nested runtime) never gets
//! its pod wired in the daemon's node, and an upgraded binary takes effect
//! at once, before the daemon is restarted.
//!
//! | situation | client |
//! |---|---|
//! | no socket, nobody listening (`ENOENT`, `ECONNREFUSED`) | runs it itself |
//! | socket owned by another user (`SO_PEERCRED`) | runs it itself, warns on stderr |
//! | no greeting within 2 s (a stopped or wedged daemon's socket still takes connections) | runs it itself (the request was never sent) |
//! | declined (identity differs, daemon busy) | runs it itself |
//! | connection lost before the request was written | runs it itself (the daemon acts only on a whole request) |
//! | connection lost or silent after the request | code 11, try again: the invocation may have run in part, as after a crashed exec |
//!
//! # Trust
//!
//! The socket is created mode 0600, and the daemon serves only peers of
//! its own uid (`SO_PEERCRED`; another uid is declined before its request
//! is read): whoever it serves could already exec `tenet` with the same
//! rights. The client in turn talks only to a daemon of its own uid or
//! root.

pub mod client;
pub mod server;
pub mod warm;
pub mod wire;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use wire::{FileId, Identity};

/// Where `tenet serve` listens and `tenet` connects, unless `TENET_SOCKET`
/// names another path (`off`: never connect).
pub const DEFAULT_SOCKET: &str = "/run/tenet/tenet.sock";

/// The environment variable naming the socket.
pub const SOCKET_ENV: &str = "TENET_SOCKET";

/// The identity of the file at `path` (following links: the namespace
/// files and `/proc/self/exe` are links to what they name).
fn file_id(path: &str) -> Option<FileId> {
    std::fs::metadata(Path::new(path)).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// Where the calling thread runs (see [`Identity`]).
pub fn identity() -> Identity {
    Identity {
        netns: file_id(crate::netns::guard::THREAD_SELF_NETNS),
        mntns: file_id("/proc/self/ns/mnt"),
        root: file_id("/"),
        exe: file_id("/proc/self/exe"),
        cwd: file_id("."),
    }
}

/// Why the daemon, running at `own`, must not act for a client at
/// `client`; `None` when it may.
pub fn mismatch(own: &Identity, client: &Identity) -> Option<&'static str> {
    let checks = [
        (own.netns, client.netns, "another network namespace"),
        (own.mntns, client.mntns, "another mount namespace"),
        (own.root, client.root, "another root directory"),
        (own.exe, client.exe, "another tenet binary"),
        (own.cwd, client.cwd, "another working directory"),
    ];
    checks
        .into_iter()
        .find(|(a, b, _)| a.is_none() || a != b)
        .map(|(_, _, why)| why)
}

/// The socket the client should use, from its environment; `None` when
/// `TENET_SOCKET=off`.
pub fn socket_path(env: &[(String, String)]) -> Option<std::path::PathBuf> {
    match env.iter().find(|(k, _)| k == SOCKET_ENV).map(|(_, v)| v) {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(v.into()),
        _ => Some(DEFAULT_SOCKET.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_client_in_the_same_place_from_the_same_binary_is_served() {
        let own = identity();
        assert!(own.netns.is_some() && own.exe.is_some() && own.root.is_some());
        assert_eq!(mismatch(&own, &own), None);
        let other = Some(FileId { dev: 1, ino: 1 });
        for (client, why) in [
            (
                Identity {
                    netns: other,
                    ..own
                },
                "another network namespace",
            ),
            (
                Identity {
                    mntns: other,
                    ..own
                },
                "another mount namespace",
            ),
            (Identity { root: other, ..own }, "another root directory"),
            (Identity { exe: None, ..own }, "another tenet binary"),
            (Identity { cwd: other, ..own }, "another working directory"),
        ] {
            assert_eq!(mismatch(&own, &client), Some(why));
        }
        // A daemon that cannot tell where it runs serves nobody.
        let blind = Identity { netns: None, ..own };
        assert_eq!(mismatch(&blind, &blind), Some("another network namespace"));
    }

    #[test]
    fn the_socket_comes_from_the_environment() {
        let env = |v: &str| vec![(SOCKET_ENV.to_owned(), v.to_owned())];
        assert_eq!(socket_path(&[]), Some(DEFAULT_SOCKET.into()));
        assert_eq!(socket_path(&env("")), Some(DEFAULT_SOCKET.into()));
        assert_eq!(socket_path(&env("/tmp/x.sock")), Some("/tmp/x.sock".into()));
        assert_eq!(socket_path(&env("off")), None);
    }
}
