//! The CNI_* environment: which command, and for which attachment.
//!
//! libcni always sets all six variables, possibly empty, so an empty value
//! means unset. Which ones are required depends on the command (SPEC §2).

use std::path::PathBuf;

use super::args::CniArgs;
use super::error::{CniError, code};
use crate::plan::validate::check_ifname;

/// The CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach (best effort, idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Report readiness.
    Status,
    /// Remove resources of stale attachments.
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The variable name as the spec writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The parsed environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// CNI_COMMAND.
    pub command: Command,
    /// CNI_CONTAINERID.
    pub container_id: Option<String>,
    /// CNI_NETNS.
    pub netns: Option<String>,
    /// CNI_IFNAME.
    pub ifname: Option<String>,
    /// CNI_ARGS.
    pub args: CniArgs,
    /// CNI_PATH.
    pub path: Vec<PathBuf>,
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (SPEC §3 "Attachment Parameters").
pub fn valid_container_id(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Env {
    /// Parses from `(name, value)` pairs (the process environment in `main`).
    pub fn parse<I: IntoIterator<Item = (String, String)>>(vars: I) -> Result<Self, CniError> {
        let (mut command, mut container_id, mut netns, mut ifname, mut args, mut path) =
            (None, None, None, None, None, None);
        for (k, v) in vars {
            // Empty means unset: libcni exports all six, possibly empty.
            if v.is_empty() {
                continue;
            }
            match k.as_str() {
                "CNI_COMMAND" => command = Some(v),
                "CNI_CONTAINERID" => container_id = Some(v),
                "CNI_NETNS" => netns = Some(v),
                "CNI_IFNAME" => ifname = Some(v),
                "CNI_ARGS" => args = Some(v),
                "CNI_PATH" => path = Some(v),
                _ => {}
            }
        }
        let Some(cmd_s) = command else {
            return Err(CniError::new(
                code::INVALID_ENV,
                "required env variables [CNI_COMMAND] missing",
                "",
            ));
        };
        let Some(command) = Command::parse(&cmd_s) else {
            return Err(CniError::new(
                code::INVALID_ENV,
                "invalid CNI_COMMAND",
                format!("{cmd_s:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"),
            ));
        };
        // VERSION needs nothing else; podman probes with dummy values.
        if command == Command::Version {
            return Ok(Env {
                command,
                container_id: None,
                netns: None,
                ifname: None,
                args: CniArgs::default(),
                path: Vec::new(),
            });
        }
        let required: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
            _ => &[],
        };
        let present = |n: &str| match n {
            "CNI_CONTAINERID" => container_id.is_some(),
            "CNI_NETNS" => netns.is_some(),
            "CNI_IFNAME" => ifname.is_some(),
            _ => true,
        };
        let missing: Vec<&str> = required.iter().copied().filter(|n| !present(n)).collect();
        if !missing.is_empty() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("required env variables [{}] missing", missing.join(" ")),
                format!("CNI_COMMAND={cmd_s} needs {}", required.join(", ")),
            ));
        }
        if let Some(id) = &container_id
            && !valid_container_id(id)
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                "invalid CNI_CONTAINERID",
                format!("{id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"),
            ));
        }
        if let Some(name) = &ifname {
            check_ifname(name)
                .map_err(|m| CniError::new(code::INVALID_ENV, "invalid CNI_IFNAME", m))?;
        }
        let args = match args {
            Some(a) => CniArgs::parse(&a)?,
            None => CniArgs::default(),
        };
        let path = path
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::parse(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn required_variables_per_command() {
        let full = [
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        for cmd in ["ADD", "CHECK", "DEL"] {
            let mut v = vec![("CNI_COMMAND", cmd)];
            v.extend(full);
            assert!(env(&v).is_ok(), "{cmd}");
        }
        let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_NETNS") && e.msg.contains("CNI_IFNAME"),
            "{e}"
        );
        // DEL: netns optional, and empty means unset.
        let d = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert_eq!(d.netns, None);
        for cmd in ["STATUS", "GC"] {
            assert!(
                env(&[
                    ("CNI_COMMAND", cmd),
                    ("CNI_CONTAINERID", ""),
                    ("CNI_IFNAME", "")
                ])
                .is_ok()
            );
        }
        assert_eq!(env(&[]).unwrap_err().code, code::INVALID_ENV);
        assert_eq!(
            env(&[("CNI_COMMAND", "ADDX")]).unwrap_err().code,
            code::INVALID_ENV
        );
    }

    #[test]
    fn podman_version_probe_is_accepted() {
        let e = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_NETNS", "dummy"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_PATH", "dummy"),
            ("CNI_CONTAINERID", ""),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Version);
    }

    #[test]
    fn identifiers_are_checked() {
        let bad_id = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(bad_id.msg.contains("CNI_CONTAINERID"));
        for name in ["eth0/x", "a-very-long-ifname", "eth 0", ".."] {
            let e = env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c"),
                ("CNI_IFNAME", name),
            ])
            .unwrap_err();
            assert!(e.msg.contains("CNI_IFNAME"), "{name}: {e}");
        }
        assert!(valid_container_id("a1_b.c-d"));
        assert!(!valid_container_id("-a"));
        assert!(!valid_container_id(""));
    }

    #[test]
    fn path_and_args_are_parsed() {
        let e = env(&[
            ("CNI_COMMAND", "GC"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            ("CNI_ARGS", "IgnoreUnknown=1;A=b"),
        ])
        .unwrap();
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(e.args.get("A"), Some("b"));
        assert_eq!(
            env(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", "oops")])
                .unwrap_err()
                .code,
            code::INVALID_ENV
        );
    }
}
